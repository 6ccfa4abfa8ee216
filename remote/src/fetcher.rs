//! Remote reads from another process: a confined daemon that serves a
//! store with remotes has no network (ARCHITECTURE.md, "The daemons'
//! sandbox"), so a small fetcher process, started before the daemon
//! confines itself and confined on its own, talks to the remotes for it.
//!
//! The fetcher only ever does one thing: the bytes `START..START+LEN` of
//! `packs/NAME` on remote `ID`, for a well-formed pack name and a remote it
//! loaded from the catalog when it started. It holds no store file, so a
//! daemon taken over through a guest or FUSE request can reach, through
//! it, only the ranges of pack objects its own reads would fetch anyway;
//! and what the fetcher returns is verified by the daemon
//! ([`crate::source::RemotePacks`]) before it is served or cached, as any
//! remote's bytes.
//!
//! The daemon holds several connections (Unix stream socket pairs) and
//! uses each for one request at a time; the fetcher serves each on a
//! thread of its own. One request, little-endian:
//! `ID (i64) START (u64) LEN (u32) NAME_LEN (u8) NAME`; one answer:
//! `STATUS (u8: 0 bytes follow, 1 an error text follows) LEN (u32) BYTES`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nexus_store::catalog::RemoteRow;

use crate::client::{Client, Timeouts};
use crate::error::{RemoteError, Result};
use crate::meta::is_pack_name;

/// The longest range one request may ask for (blocks are far smaller).
pub const MAX_RANGE: u32 = 64 << 20;
/// Answer status: the bytes follow.
const OK: u8 = 0;
/// Answer status: an error text follows.
const FAILED: u8 = 1;

/// The clients of a set of remotes, opened on first use (opening makes no
/// request).
pub struct Clients {
    timeouts: Timeouts,
    open: Mutex<HashMap<i64, Arc<Client>>>,
}

impl Clients {
    /// No client yet; each will read within `timeouts`.
    pub fn new(timeouts: Timeouts) -> Clients {
        Clients {
            timeouts,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The deadlines each client reads within.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The client of `remote`.
    pub fn get(&self, remote: &RemoteRow) -> Result<Arc<Client>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = open.get(&remote.id) {
            return Ok(c.clone());
        }
        let client = Arc::new(Client::open(&crate::endpoint_of(remote)?, self.timeouts)?);
        open.insert(remote.id, client.clone());
        Ok(client)
    }

    /// Reads `range` of pack `pack` from `remote`.
    pub fn get_range(&self, remote: &RemoteRow, pack: &str, range: Range<u64>) -> Result<Bytes> {
        self.get(remote)?.get_range(&format!("packs/{pack}"), range)
    }
}

/// One request of the fetcher link (FORMAT.md, "Fetcher link"): bytes
/// `start..start+len` of `packs/NAME` on the remote whose id is `remote`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    /// The remote's catalog id.
    pub remote: i64,
    /// First byte.
    pub start: u64,
    /// How many bytes.
    pub len: u32,
    /// The pack's object name, as sent (checked by [`RangeRequest::checked`]).
    pub name: Vec<u8>,
}

impl RangeRequest {
    /// Bytes before the name.
    const HEAD_LEN: usize = 21;

    /// The request as sent; `None` when the name is longer than 255 bytes
    /// (no pack name is).
    pub fn encode(&self) -> Option<Vec<u8>> {
        let name_len = u8::try_from(self.name.len()).ok()?;
        let mut out = Vec::with_capacity(Self::HEAD_LEN + self.name.len());
        out.extend_from_slice(&self.remote.to_le_bytes());
        out.extend_from_slice(&self.start.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.push(name_len);
        out.extend_from_slice(&self.name);
        Some(out)
    }

    /// Reads one request; `None` when the stream ends before a request
    /// begins (the daemon closed the connection).
    pub fn read_from(stream: &mut impl Read) -> io::Result<Option<RangeRequest>> {
        let mut head = [0u8; Self::HEAD_LEN];
        match stream.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let [
            r0,
            r1,
            r2,
            r3,
            r4,
            r5,
            r6,
            r7,
            s0,
            s1,
            s2,
            s3,
            s4,
            s5,
            s6,
            s7,
            l0,
            l1,
            l2,
            l3,
            n,
        ] = head;
        let mut name = vec![0u8; usize::from(n)];
        stream.read_exact(&mut name)?;
        Ok(Some(RangeRequest {
            remote: i64::from_le_bytes([r0, r1, r2, r3, r4, r5, r6, r7]),
            start: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            name,
        }))
    }

    /// The pack name and byte range asked for, if the request is one a
    /// fetcher may serve: a well-formed pack name, 1 to [`MAX_RANGE`]
    /// bytes, a range that does not pass 2^64.
    pub fn checked(&self) -> std::result::Result<(&str, Range<u64>), String> {
        let pack = std::str::from_utf8(&self.name)
            .ok()
            .filter(|n| is_pack_name(n))
            .ok_or("not a pack name")?;
        if self.len == 0 || self.len > MAX_RANGE {
            return Err(format!("a range of {} bytes", self.len));
        }
        let end = self
            .start
            .checked_add(u64::from(self.len))
            .ok_or("a range past 2^64")?;
        Ok((pack, self.start..end))
    }
}

/// The fetcher process's side: the remotes it serves.
pub struct FetcherServer {
    remotes: HashMap<i64, RemoteRow>,
    clients: Clients,
}

impl FetcherServer {
    /// Serves `remotes` (those the catalog lists when the fetcher starts),
    /// each read within `timeouts`.
    pub fn new(remotes: Vec<RemoteRow>, timeouts: Timeouts) -> FetcherServer {
        FetcherServer {
            remotes: remotes.into_iter().map(|r| (r.id, r)).collect(),
            clients: Clients::new(timeouts),
        }
    }

    /// Answers the requests of one connection until the daemon closes it.
    pub fn serve(&self, mut stream: UnixStream) -> io::Result<()> {
        while let Some(request) = RangeRequest::read_from(&mut stream)? {
            let answer = self.answer(&request);
            let (status, body) = match &answer {
                Ok(bytes) => (OK, bytes.as_ref()),
                Err(why) => (FAILED, why.as_bytes()),
            };
            let mut out = Vec::with_capacity(5 + body.len());
            out.push(status);
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(body);
            stream.write_all(&out)?;
        }
        Ok(())
    }

    fn answer(&self, request: &RangeRequest) -> std::result::Result<Bytes, String> {
        let (pack, range) = request.checked()?;
        let remote = self
            .remotes
            .get(&request.remote)
            .ok_or("a remote added after the daemon started (restart the daemon to read it)")?;
        self.clients
            .get_range(remote, pack, range)
            .map_err(|e| e.to_string())
    }
}

/// The daemon's side: connections to its fetcher, one request on each at
/// a time.
pub struct FetcherLink {
    pool: Mutex<Pool>,
    returned: Condvar,
    /// How long a request waits for a connection to come free: the
    /// streams' read timeout, so that a reader queued behind others fails
    /// within one deadline, not one per request ahead of it.
    wait: Option<Duration>,
}

/// The connections not in use, and how many still work.
struct Pool {
    idle: Vec<UnixStream>,
    alive: usize,
}

impl FetcherLink {
    /// Requests go over `streams` (whose read timeout bounds a fetcher
    /// that stopped answering).
    pub fn new(streams: Vec<UnixStream>) -> FetcherLink {
        let wait = streams
            .first()
            .and_then(|s| s.read_timeout().ok().flatten());
        FetcherLink {
            pool: Mutex::new(Pool {
                alive: streams.len(),
                idle: streams,
            }),
            returned: Condvar::new(),
            wait,
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `range` of pack `pack` from `remote` through the fetcher,
    /// once `ready` (asked when a connection is free, as the wait for one
    /// may be long: whether the remote went offline meanwhile) allows.
    pub fn get_range(
        &self,
        remote: &RemoteRow,
        pack: &str,
        range: Range<u64>,
        ready: impl FnOnce() -> nexus_store::Result<()>,
    ) -> Result<Bytes> {
        let unavailable = |why: String| RemoteError::Unavailable {
            remote: remote.name.clone(),
            what: format!("packs/{pack}"),
            why,
        };
        let len = u32::try_from(range.end.saturating_sub(range.start))
            .ok()
            .filter(|&l| l <= MAX_RANGE)
            .ok_or_else(|| unavailable("a range too long for one request".into()))?;
        let request = RangeRequest {
            remote: remote.id,
            start: range.start,
            len,
            name: pack.as_bytes().to_vec(),
        }
        .encode()
        .ok_or_else(|| unavailable("not a pack name".into()))?;
        let deadline = self.wait.map(|w| Instant::now() + w);
        let mut stream = {
            let mut pool = self.pool();
            loop {
                if let Some(s) = pool.idle.pop() {
                    break s;
                }
                if pool.alive == 0 {
                    return Err(unavailable("the fetcher process is gone".into()));
                }
                pool = match deadline {
                    None => self.returned.wait(pool).unwrap_or_else(|p| p.into_inner()),
                    Some(deadline) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(unavailable(format!(
                                "no connection to the fetcher process came free within {:.1} s",
                                self.wait.unwrap_or_default().as_secs_f64()
                            )));
                        }
                        self.returned
                            .wait_timeout(pool, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                };
            }
        };
        if let Err(e) = ready() {
            self.pool().idle.push(stream);
            self.returned.notify_one();
            return Err(e.into());
        }
        // The whole answer within one deadline: the streams' timeout bounds
        // each read, and a fetcher sending a byte at a time would restart it.
        let answer_by = self.wait.map(|w| Instant::now() + w);
        let exchange = |stream: &mut UnixStream| -> io::Result<(u8, Vec<u8>)> {
            stream.write_all(&request)?;
            let mut head = [0u8; 5];
            read_exact_by(stream, &mut head, answer_by)?;
            let body_len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
            if body_len > MAX_RANGE {
                return Err(io::Error::other("an answer too long"));
            }
            let mut body = vec![0u8; body_len as usize];
            read_exact_by(stream, &mut body, answer_by)?;
            Ok((head[0], body))
        };
        let result = exchange(&mut stream);
        {
            let mut pool = self.pool();
            match result {
                Ok(_) => pool.idle.push(stream),
                // The connection is out of step (or gone): never reused.
                Err(_) => pool.alive -= 1,
            }
        }
        self.returned.notify_all();
        match result {
            // The fetcher holds what a hostile server may have taken over:
            // its answer is checked as a server's is (readers slice it).
            Ok((OK, body)) if body.len() == len as usize => Ok(Bytes::from(body)),
            Ok((OK, body)) => Err(unavailable(format!(
                "the fetcher process answered {} bytes for a range of {len}",
                body.len()
            ))),
            Ok((_, body)) => Err(unavailable(String::from_utf8_lossy(&body).into_owned())),
            Err(e) => Err(unavailable(format!("the fetcher process: {e}"))),
        }
    }
}

/// Fills `buf` from `stream`, all of it by `deadline` (when there is one).
fn read_exact_by(
    stream: &mut UnixStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // Waited for with poll(2), not by narrowing the socket's timeout:
        // the confined daemon may not call setsockopt.
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let timed_out = || {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no whole answer within the read deadline",
                )
            };
            if left.is_zero() {
                return Err(timed_out());
            }
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            let mut fds = [libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one pollfd of a descriptor `stream` owns, for the
            // duration of the call.
            match unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) } {
                0 => return Err(timed_out()),
                rc if rc < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                _ => {}
            }
        }
        match stream.read(&mut buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn requests_read_back_as_written(
            remote in proptest::prelude::any::<i64>(),
            start in proptest::prelude::any::<u64>(),
            len in proptest::prelude::any::<u32>(),
            name in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=255),
        ) {
            let request = RangeRequest { remote, start, len, name };
            let bytes = request.encode().expect("a name of at most 255 bytes");
            let mut reader = &bytes[..];
            let back = RangeRequest::read_from(&mut reader).unwrap();
            proptest::prop_assert_eq!(back, Some(request));
            proptest::prop_assert!(reader.is_empty());
        }
    }

    #[test]
    fn bad_requests_are_refused_and_cut_ones_are_errors() {
        let ok = RangeRequest {
            remote: 1,
            start: 5,
            len: 10,
            name: PACK.as_bytes().to_vec(),
        };
        assert_eq!(ok.checked(), Ok((PACK, 5..15)));
        let with = |f: &dyn Fn(&mut RangeRequest)| {
            let mut r = ok.clone();
            f(&mut r);
            r.checked().is_err()
        };
        assert!(with(&|r| r.name = b"../catalog.db".to_vec()));
        assert!(with(&|r| r.len = 0));
        assert!(with(&|r| r.len = MAX_RANGE + 1));
        assert!(with(&|r| r.start = u64::MAX));
        let bytes = ok.encode().unwrap();
        assert_eq!(RangeRequest::read_from(&mut &bytes[..0]).unwrap(), None);
        assert!(RangeRequest::read_from(&mut &bytes[..30]).is_err());
        assert!(
            RangeRequest {
                name: vec![b'a'; 256],
                ..ok
            }
            .encode()
            .is_none()
        );
    }

    const PACK: &str = "0123456789abcdef0123456789abcdef.pack";

    /// A fetcher's successful answer of `len` bytes (all 7).
    fn ok_answer(len: usize) -> Vec<u8> {
        let mut out = vec![OK];
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.resize(5 + len, 7);
        out
    }

    /// A fetcher (taken over) that answers every request with `answer`
    /// bytes, whatever the range.
    fn lying_fetcher(answer: usize) -> (FetcherLink, std::thread::JoinHandle<()>) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let far = std::thread::spawn(move || {
            while let Ok(Some(_)) = RangeRequest::read_from(&mut theirs) {
                if theirs.write_all(&ok_answer(answer)).is_err() {
                    return;
                }
            }
        });
        (FetcherLink::new(vec![ours]), far)
    }

    #[test]
    fn an_answer_of_another_length_than_the_range_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let known = remote(1, dir.path());
        for answer in [99, 101, 0] {
            let (link, far) = lying_fetcher(answer);
            let err = link
                .get_range(&known, PACK, 1000..1100, || Ok(()))
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("answered {answer} bytes for a range of 100")),
                "{err}"
            );
            drop(link);
            far.join().unwrap();
        }
        let (link, far) = lying_fetcher(100);
        assert_eq!(
            link.get_range(&known, PACK, 1000..1100, || Ok(()))
                .unwrap()
                .len(),
            100
        );
        drop(link);
        far.join().unwrap();
    }

    /// Readers queued behind a slow fetcher (each answer after `SLOW`,
    /// within the read deadline) wait for a connection no longer than one
    /// deadline from their own start, not one answer per reader ahead of
    /// them; and one whose remote went offline while it waited is not sent
    /// at all.
    #[test]
    fn a_reader_waits_for_a_connection_no_longer_than_one_deadline() {
        const SLOW: Duration = Duration::from_millis(300);
        let dir = tempfile::tempdir().unwrap();
        let known = remote(1, dir.path());
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let deadline = Duration::from_millis(400);
        ours.set_read_timeout(Some(deadline)).unwrap();
        let far = std::thread::spawn(move || {
            while let Ok(Some(request)) = RangeRequest::read_from(&mut theirs) {
                std::thread::sleep(SLOW);
                if theirs.write_all(&ok_answer(request.len as usize)).is_err() {
                    return;
                }
            }
        });
        let link = Arc::new(FetcherLink::new(vec![ours]));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (link, known) = (link.clone(), known.clone());
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let got = link.get_range(&known, PACK, 0..10, || Ok(()));
                    (
                        started.elapsed(),
                        got.map(|b| b.len()).map_err(|e| e.to_string()),
                    )
                })
            })
            .collect();
        let outcomes: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        let refused = outcomes
            .iter()
            .filter(|(_, got)| got.as_ref().is_err_and(|e| e.contains("came free")))
            .count();
        assert!(
            refused >= 1,
            "four readers of one slow connection all waited: {outcomes:?}"
        );
        for (took, _) in &outcomes {
            assert!(
                *took < deadline + SLOW + Duration::from_millis(200),
                "a reader took {took:?}: {outcomes:?}"
            );
        }
        drop(link);
        far.join().unwrap();

        // A free connection, but the remote went offline meanwhile.
        let (link, far) = lying_fetcher(10);
        let offline = || {
            Err(nexus_store::StoreError::Remote {
                pack: PACK.into(),
                remote: "r".into(),
                reason: "unreachable".into(),
            })
        };
        let err = link.get_range(&known, PACK, 0..10, offline).unwrap_err();
        assert!(err.to_string().contains("unreachable"), "{err}");
        assert_eq!(
            link.get_range(&known, PACK, 0..10, || Ok(()))
                .unwrap()
                .len(),
            10
        );
        drop(link);
        far.join().unwrap();
    }

    /// A fetcher (taken over) that sends its answer a byte every 50 ms,
    /// each read well within the streams' timeout, is cut off at the
    /// deadline of the whole answer.
    #[test]
    fn an_answer_sent_a_byte_at_a_time_is_cut_off_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let known = remote(1, dir.path());
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let deadline = Duration::from_millis(300);
        ours.set_read_timeout(Some(deadline)).unwrap();
        let far = std::thread::spawn(move || {
            let Ok(Some(request)) = RangeRequest::read_from(&mut theirs) else {
                return;
            };
            for byte in ok_answer(request.len as usize) {
                std::thread::sleep(Duration::from_millis(50));
                if theirs.write_all(&[byte]).is_err() {
                    return;
                }
            }
        });
        let link = FetcherLink::new(vec![ours]);
        let started = Instant::now();
        let err = link.get_range(&known, PACK, 0..20, || Ok(())).unwrap_err();
        let took = started.elapsed();
        assert!(
            took < deadline + Duration::from_millis(150),
            "the dripping answer held the reader {took:?}: {err}"
        );
        drop(link);
        far.join().unwrap();
    }

    fn remote(id: i64, dir: &std::path::Path) -> RemoteRow {
        RemoteRow {
            id,
            name: format!("r{id}"),
            url: format!("file://{}", dir.display()),
            endpoint: None,
            region: None,
            domain: "test".into(),
            added: 0,
        }
    }

    #[test]
    fn ranges_of_known_remotes_packs_come_back_and_nothing_else_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("packs")).unwrap();
        let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        std::fs::write(dir.path().join("packs").join(PACK), &bytes).unwrap();
        std::fs::write(dir.path().join("secret"), b"not a pack").unwrap();
        let known = remote(1, dir.path());
        let server = FetcherServer::new(vec![known.clone()], Timeouts::default());
        let (ours, theirs) = UnixStream::pair().unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| server.serve(theirs).unwrap());
            let link = FetcherLink::new(vec![ours]);
            assert_eq!(
                link.get_range(&known, PACK, 100..1100, || Ok(()))
                    .unwrap()
                    .as_ref(),
                &bytes[100..1100]
            );
            // Not a pack name: nothing outside `packs/` is reachable.
            let err = link
                .get_range(&known, "../secret", 0..4, || Ok(()))
                .unwrap_err();
            assert!(err.to_string().contains("not a pack name"), "{err}");
            // A remote the fetcher did not load is not reached.
            let unknown = remote(2, dir.path());
            let err = link.get_range(&unknown, PACK, 0..4, || Ok(())).unwrap_err();
            assert!(err.to_string().contains("restart the daemon"), "{err}");
            // The connection stays usable after refusals.
            assert_eq!(
                link.get_range(&known, PACK, 0..10, || Ok(()))
                    .unwrap()
                    .as_ref(),
                &bytes[..10]
            );
            drop(link);
        });
    }
}
