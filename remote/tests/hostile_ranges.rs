//! A mirror that answers a pack's range request with the right status and
//! `Content-Range` but a body of any declared length must be refused once
//! it has sent more than was asked for, never gathered: a daemon reading
//! lazily would otherwise hold whatever the server streams until the read
//! deadline. Alone in its test binary, so that the process's peak memory is
//! this test's.

use std::fs;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use nexus_remote::client::Timeouts;
use nexus_remote::open_reader;
use nexus_store::read::ReaderOptions;

mod support;
use support::{Request, noise, peak_rss, publish_one_file, read_request, subscribe};

/// The body length the mirror declares for every range: a terabyte.
const DECLARED: u64 = 1 << 40;

/// Serves the files of `root` over HTTP/1.1: whole objects as they are,
/// and every range request with a correct `206` head declaring
/// [`DECLARED`] bytes, followed by zeros until the client hangs up.
fn serve_hostile(listener: TcpListener, root: PathBuf) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let root = root.clone();
        std::thread::spawn(move || answer(stream, &root));
    }
}

fn answer(stream: TcpStream, root: &Path) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while let Some(Request {
        method,
        path,
        range,
    }) = read_request(&mut reader)
    {
        let file = root.join(path.trim_start_matches('/'));
        let Ok(bytes) = fs::read(&file) else {
            let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        match range {
            Some((start, end)) => {
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{}\r\n\
                     Content-Length: {DECLARED}\r\n\r\n",
                    bytes.len()
                );
                if out.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let zeros = vec![0u8; 1 << 16];
                while out.write_all(&zeros).is_ok() {}
                return;
            }
            None => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", bytes.len());
                if out.write_all(head.as_bytes()).is_err() {
                    return;
                }
                if method != "HEAD" && out.write_all(&bytes).is_err() {
                    return;
                }
            }
        }
    }
}

#[test]
fn a_range_answer_longer_than_asked_is_refused_without_being_held() {
    let tmp = tempfile::tempdir().unwrap();
    let noise = noise(400_000);
    // Published to a directory, which the hostile mirror then serves.
    let published = tmp.path().join("published");
    let keys = publish_one_file(tmp.path(), &noise, &published);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || serve_hostile(listener, published));

    let (subscriber, pulled) = subscribe(tmp.path(), &keys, &format!("http://127.0.0.1:{port}"));
    pulled.unwrap();

    let before = peak_rss();
    let (reader, _) = open_reader(subscriber.dir(), ReaderOptions::default()).unwrap();
    let package = subscriber.catalog().package("tool", "1").unwrap().unwrap();
    let inode = subscriber.resolve(&package, b"f").unwrap();
    let started = std::time::Instant::now();
    let err = reader
        .copy_content(inode.blob.unwrap(), &mut Vec::new())
        .unwrap_err()
        .to_string();
    let grown = peak_rss().saturating_sub(before);
    assert!(
        err.contains("or more"),
        "the over-long range answer was not refused as such: {err}"
    );
    assert!(
        grown < 256 << 20,
        "a range answer of a declared terabyte took {} MiB",
        grown >> 20
    );
    assert!(
        started.elapsed() < Timeouts::default().read,
        "the refusal waited for the read deadline ({:?})",
        started.elapsed()
    );
}
