//! A mirror may answer with redirects, but only within its own origin: a
//! redirect to any other address would make this host send requests of the
//! mirror's choosing (a metadata service, a local admin page). Such a pull
//! is refused, naming where it was sent, and the other address never sees
//! a request; a mirror's redirects to its own paths are followed.

use std::fs;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

mod support;
use support::{Request, noise, publish_one_file, read_published_file, read_request, subscribe};

/// What a test server does with a request for `path`.
enum Answer {
    /// The file under the server's root, whole or the range asked for.
    File(PathBuf),
    /// `302 Found` to this URL.
    Redirect(String),
}

/// Serves HTTP/1.1 on `listener`, each request answered as `route` says,
/// counting requests in `seen`.
fn serve(
    listener: TcpListener,
    seen: Arc<AtomicUsize>,
    route: impl Fn(&str) -> Answer + Send + Sync + 'static,
) {
    let route = Arc::new(route);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let (seen, route) = (seen.clone(), route.clone());
        std::thread::spawn(move || answer(stream, &seen, &*route));
    }
}

fn answer(stream: TcpStream, seen: &AtomicUsize, route: &dyn Fn(&str) -> Answer) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while let Some(Request {
        method,
        path,
        range,
    }) = read_request(&mut reader)
    {
        seen.fetch_add(1, Ordering::SeqCst);
        let (head, body) = match route(&path) {
            Answer::Redirect(to) => (
                format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"),
                Vec::new(),
            ),
            Answer::File(file) => match (fs::read(&file), range) {
                (Err(_), _) => (
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
                    Vec::new(),
                ),
                (Ok(bytes), Some((start, end))) => (
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{}\r\n\
                         Content-Length: {}\r\n\r\n",
                        bytes.len(),
                        end + 1 - start
                    ),
                    bytes[start as usize..=end as usize].to_vec(),
                ),
                (Ok(bytes), None) => (
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", bytes.len()),
                    bytes,
                ),
            },
        };
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method != "HEAD" && out.write_all(&body).is_err() {
            return;
        }
    }
}

/// Starts a server on a free port of 127.0.0.1; returns its port and its
/// request count.
fn start(route: impl Fn(&str) -> Answer + Send + Sync + 'static) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    std::thread::spawn(move || serve(listener, counted, route));
    (port, seen)
}

fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

#[test]
fn a_redirect_to_another_origin_is_refused_before_anything_is_sent_there() {
    let tmp = tempfile::tempdir().unwrap();
    let published = tmp.path().join("published");
    let keys = publish_one_file(tmp.path(), b"hello", &published);
    // Where the mirror sends its subscribers: a server that would answer
    // every request correctly, standing for any address this host reaches.
    let root = published.clone();
    let (elsewhere, reached) = start(move |path| Answer::File(under(&root, path)));
    let (mirror, asked) =
        start(move |path| Answer::Redirect(format!("http://127.0.0.1:{elsewhere}{path}")));

    let (subscriber, pulled) = subscribe(tmp.path(), &keys, &format!("http://127.0.0.1:{mirror}"));
    let err = pulled.unwrap_err();
    let message = format!("{err:#}");
    let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(asked.load(Ordering::SeqCst) > 0, "the mirror was not asked");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the redirect was followed to another origin: {message}"
    );
    assert!(
        chain.contains(&format!("to http://127.0.0.1:{elsewhere}")),
        "the refusal does not name where the redirect pointed: {chain}"
    );
    assert!(
        subscriber.catalog().generations().unwrap().is_empty(),
        "a refused pull made a generation"
    );
}

#[test]
fn a_mirrors_redirects_within_its_own_origin_are_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let published = tmp.path().join("published");
    let noise = noise(300_000);
    let keys = publish_one_file(tmp.path(), &noise, &published);
    // The mirror moved its tree from /old/ to /new/ and says so.
    let root = published.clone();
    let (mirror, _) = start(move |path| match path.strip_prefix("/old/") {
        Some(rest) => Answer::Redirect(format!("/new/{rest}")),
        None => Answer::File(under(&root, path.trim_start_matches("/new"))),
    });

    let (subscriber, pulled) = subscribe(
        tmp.path(),
        &keys,
        &format!("http://127.0.0.1:{mirror}/old/"),
    );
    pulled.unwrap();
    let read = read_published_file(&subscriber).unwrap();
    assert_eq!(read, noise, "the file read through the redirects");
}
