//! Running a program confined, as Nix's sandboxed builds: in new mount,
//! pid, network, IPC, UTS and cgroup namespaces (and a user namespace when
//! not run as root), as an unprivileged build user ([`user`]) with
//! `no_new_privs`, on a file system ([`plan`]) where the host is
//! read-only, `/proc` shows only the sandbox's processes, the network is
//! an empty namespace (not even the host's loopback), and only the build's
//! private `/tmp` and the directories it is given writable are writable.
//! A seccomp filter ([`filter`]) keeps the script from making sockets
//! that would reach past those namespaces: host Unix sockets on the
//! read-only tree, `AF_VSOCK`, io_uring's.
//!
//! The namespaces come from `unshare(2)` and `fork(2)` through the `nix`
//! crate (typed flags and errors over the system calls, already a
//! dependency of the FUSE mount). How the processes are arranged, and why
//! nothing but system calls runs between `fork` and `execve`: [`child`].

mod child;
pub mod filter;
pub mod plan;
pub mod user;

use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, pipe2};

pub use plan::{RUN_DIR, RunMount};
pub use user::BuildUser;

use child::{IdMaps, Prepared, Stage};
use plan::{Layout, Step, cstring, masked_under};

/// Why a sandbox could not run its program.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Preparing its directories or files failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A step of setting it up failed (the kernel's error).
    #[error("setting up the build sandbox: {what}: {errno}")]
    Setup {
        /// The step.
        what: String,
        /// The error.
        errno: Errno,
    },
    /// The build user could not read a source directory.
    #[error("the build user (uid {uid}) cannot read {}: make it readable to that user, or choose another build user", path.display())]
    Unreadable {
        /// The source.
        path: PathBuf,
        /// The build user.
        uid: u32,
    },
    /// The seccomp filter could not be compiled (an architecture
    /// `seccompiler` does not know).
    #[error("compiling the build sandbox's seccomp filter: {0}")]
    Filter(#[source] seccompiler::BackendError),
    /// A recipe named a path below a directory the build user cannot
    /// search, from outside that directory.
    #[error("{} lies below {}, which the build user (uid {uid}) cannot search, and the recipe {} does not: a recipe may name what is below a private directory only from inside it", path.display(), dir.display(), recipe.display())]
    Private {
        /// The path the recipe named.
        path: PathBuf,
        /// The directory above it the build user cannot search.
        dir: PathBuf,
        /// The build user.
        uid: u32,
        /// The recipe file.
        recipe: PathBuf,
    },
    /// A source directory lies where the sandbox puts its own file system.
    #[error("{} is under {masked}, which the build sandbox replaces", path.display())]
    Masked {
        /// The source.
        path: PathBuf,
        /// `/run`, `/dev` or `/proc`.
        masked: &'static str,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to run, and with what.
pub struct Sandbox<'a> {
    /// The program, an absolute path (the same inside as outside).
    pub program: &'a Path,
    /// Its arguments, after `argv[0]`.
    pub args: &'a [OsString],
    /// Its whole environment: nothing of the caller's is passed on.
    pub env: &'a [(String, OsString)],
    /// The working directory, inside the sandbox.
    pub cwd: &'a Path,
    /// Host directories that must be readable at their own paths
    /// (canonical): the sources.
    pub sources: &'a [PathBuf],
    /// The file that named the sources (the recipe), canonical. When the
    /// caller is root, a source below a directory the build user cannot
    /// search is bound only if this file lies below that directory too
    /// ([`check_named`]); else the run is refused.
    pub named_by: &'a Path,
    /// Host directories at `/run/nexus/NAME`.
    pub run: &'a [RunMount],
    /// Who runs it when the caller is root (the caller is never root
    /// inside the sandbox). Ignored otherwise: an unprivileged caller's
    /// build runs as the caller, in a user namespace of its own.
    pub user: &'a BuildUser,
    /// A directory private to the caller (mode 0700), empty: the sandbox
    /// makes its root, `/tmp` and log here.
    pub scratch: &'a Path,
}

/// How the program ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit code, or 128 + the signal that ended it.
    pub code: i32,
    /// What it wrote to standard output and error.
    pub log: PathBuf,
}

impl Finished {
    /// The last `lines` lines of its output.
    pub fn tail(&self, lines: usize) -> String {
        let text = fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn c(s: impl AsRef<std::ffi::OsStr>) -> CString {
    CString::new(s.as_ref().as_bytes()).unwrap_or_default()
}

/// Runs the program in the sandbox and waits for it.
pub fn run(sandbox: &Sandbox<'_>) -> Result<Finished, SandboxError> {
    for source in sandbox.sources {
        if let Some(masked) = masked_under(source).filter(|m| *m != "/tmp") {
            return Err(SandboxError::Masked {
                path: source.clone(),
                masked,
            });
        }
    }
    let as_root = nix::unistd::geteuid().is_root();
    // The build user's writable directories below are reachable only
    // through the sandbox's mounts, never through the scratch directory.
    let scratch_meta = fs::metadata(sandbox.scratch).map_err(io(sandbox.scratch))?;
    if scratch_meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(sandbox.scratch, fs::Permissions::from_mode(0o700))
            .map_err(io(sandbox.scratch))?;
    }
    let hidden = if as_root {
        hidden_above(sandbox.sources, sandbox.user, sandbox.named_by)?
    } else {
        Vec::new()
    };
    let new_root = sandbox.scratch.join("root");
    let tmp = sandbox.scratch.join("tmp");
    let log = sandbox.scratch.join("log");
    fs::create_dir(&new_root).map_err(io(&new_root))?;
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).map_err(io(&tmp))?;
    if as_root {
        chown(&tmp, Some(sandbox.user.uid), Some(sandbox.user.gid)).map_err(io(&tmp))?;
    }
    let output = File::create(&log).map_err(io(&log))?;
    let stdin = File::open("/dev/null").map_err(io(Path::new("/dev/null")))?;
    let (report_r, report_w) = pipe2(OFlag::O_CLOEXEC).map_err(|errno| SandboxError::Setup {
        what: "creating a pipe".into(),
        errno,
    })?;

    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    let id_maps = if as_root {
        None
    } else {
        flags |= CloneFlags::CLONE_NEWUSER;
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        Some(IdMaps {
            uid_map: c(format!("{uid} {uid} 1\n")),
            gid_map: c(format!("{gid} {gid} 1\n")),
        })
    };
    let steps = plan::steps(&Layout {
        new_root: &new_root,
        tmp: &tmp,
        sources: sandbox.sources,
        run: sandbox.run,
        hidden: &hidden,
    });
    let filters = filter::programs().map_err(SandboxError::Filter)?;
    let mut argv = vec![c(sandbox.program)];
    argv.extend(sandbox.args.iter().map(c));
    let envp = sandbox
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = OsString::from(k);
            kv.push("=");
            kv.push(v);
            c(kv)
        })
        .collect();
    let mut prepared = Prepared {
        flags,
        id_maps,
        steps,
        new_root: cstring(&new_root),
        user: as_root.then(|| (sandbox.user.uid(), sandbox.user.gid())),
        cwd: cstring(sandbox.cwd),
        program: cstring(sandbox.program),
        argv,
        argv_ptrs: Vec::new(),
        envp,
        envp_ptrs: Vec::new(),
        stdin: stdin.as_raw_fd(),
        output: output.as_raw_fd(),
        report: report_w.as_raw_fd(),
        filters,
        filter_progs: Vec::new(),
    };
    prepared.seal();

    // SAFETY: the child runs only system calls on `prepared` (see child.rs).
    let intermediate = match unsafe { fork() } {
        Err(errno) => {
            return Err(SandboxError::Setup {
                what: "forking".into(),
                errno,
            });
        }
        Ok(ForkResult::Child) => child::intermediate(&prepared),
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(report_w);
    let status = loop {
        match waitpid(intermediate, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => {
                return Err(SandboxError::Setup {
                    what: "waiting for the sandbox".into(),
                    errno,
                });
            }
        }
    };
    // Every writer has exited: the pipe holds a failure record or nothing.
    let mut record = Vec::new();
    let _ = File::from(report_r).read_to_end(&mut record);
    if let Some((stage, index, errno)) = child::decode(&record) {
        return Err(SandboxError::Setup {
            what: describe(stage, index, &prepared.steps, sandbox),
            errno,
        });
    }
    Ok(Finished { code: status, log })
}

/// Whether `user` (with no supplementary groups) may use `meta` with the
/// permission bits `bits` (0o5: read and search, 0o1: search).
fn allows(meta: &fs::Metadata, user: &BuildUser, bits: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode();
    let class = if meta.uid() == user.uid {
        mode >> 6
    } else if meta.gid() == user.gid {
        mode >> 3
    } else {
        mode
    };
    class & bits == bits
}

/// Refuses `path` (canonical), which the recipe file `recipe` (canonical)
/// names, if a directory above it that `user` may not search does not
/// hold `recipe` too.
///
/// The sandbox binds a source found below such a directory (a project
/// under `/root`, 0700), and root grafts `dir` and package file sources
/// whatever the directories above them, so that a recipe, with `..` or an
/// absolute path, could otherwise hand the build user, and through
/// `/Programs` every user, what those directories keep from them. A
/// recipe inside the directory was written by someone who could reach
/// it already.
pub fn check_named(path: &Path, recipe: &Path, user: &BuildUser) -> Result<(), SandboxError> {
    for dir in path.ancestors().skip(1) {
        let meta = fs::metadata(dir).map_err(io(dir))?;
        if !allows(&meta, user, 0o1) && !recipe.starts_with(dir) {
            return Err(SandboxError::Private {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
                uid: user.uid,
                recipe: recipe.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// For each source outside `/tmp`, the topmost directory above it that
/// `user` may not search (see [`plan`]); each source itself must be
/// readable by `user`, and pass [`check_named`] for `named_by` (under
/// `/tmp` too, where it is bound whatever the directories above it).
fn hidden_above(
    sources: &[PathBuf],
    user: &BuildUser,
    named_by: &Path,
) -> Result<Vec<PathBuf>, SandboxError> {
    let mut hidden: Vec<PathBuf> = Vec::new();
    for source in sources {
        let meta = fs::metadata(source).map_err(io(source))?;
        if !allows(&meta, user, 0o5) {
            return Err(SandboxError::Unreadable {
                path: source.clone(),
                uid: user.uid,
            });
        }
        check_named(source, named_by, user)?;
        if masked_under(source).is_some() {
            continue;
        }
        let mut above: Vec<&Path> = source.ancestors().skip(1).collect();
        above.reverse();
        for dir in above.into_iter().skip(1) {
            let meta = fs::metadata(dir).map_err(io(dir))?;
            if !allows(&meta, user, 0o1) {
                if !hidden.iter().any(|h| dir.starts_with(h)) {
                    hidden.retain(|h| !h.starts_with(dir));
                    hidden.push(dir.to_path_buf());
                }
                break;
            }
        }
    }
    Ok(hidden)
}

fn describe(stage: Stage, index: usize, steps: &[Step], sandbox: &Sandbox<'_>) -> String {
    match stage {
        Stage::Step => steps
            .get(index)
            .map_or_else(|| format!("step {index}"), Step::describe),
        Stage::Unshare => "entering new namespaces".into(),
        Stage::IdMaps => "mapping the caller's ids in a new user namespace".into(),
        Stage::Fork => "forking".into(),
        Stage::Pivot => "pivoting into the new root".into(),
        Stage::Hostname => "setting the host name".into(),
        Stage::Identity => format!(
            "becoming the build user {}:{}",
            sandbox.user.uid, sandbox.user.gid
        ),
        Stage::NoNewPrivs => "setting no_new_privs".into(),
        Stage::Workdir => format!("entering {}", sandbox.cwd.display()),
        Stage::Streams => "redirecting the standard streams".into(),
        Stage::Exec => format!("executing {}", sandbox.program.display()),
        Stage::Filter => "installing the seccomp filter".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` with `sh -c` in a sandbox whose `/run/nexus/out` is
    /// writable, for a recipe `named_by`; returns the exit code, the log
    /// and the output directory.
    fn sandboxed(
        script: &str,
        sources: &[PathBuf],
        named_by: &Path,
    ) -> (i32, String, tempfile::TempDir) {
        let (finished, out, scratch) = attempt(script, sources, named_by);
        let finished = finished.unwrap();
        let log = fs::read_to_string(&finished.log).unwrap();
        let private = fs::metadata(scratch.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(private, 0o700, "the scratch directory is not private");
        (finished.code, log, out)
    }

    /// As [`sandboxed`]; returns what [`run`] did, the output directory
    /// and the scratch directory (which holds the log).
    fn attempt(
        script: &str,
        sources: &[PathBuf],
        named_by: &Path,
    ) -> (
        Result<Finished, SandboxError>,
        tempfile::TempDir,
        tempfile::TempDir,
    ) {
        let scratch = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let user = BuildUser::default_user().unwrap();
        if nix::unistd::geteuid().is_root() {
            chown(out.path(), Some(user.uid), Some(user.gid)).unwrap();
        }
        let finished = run(&Sandbox {
            program: Path::new("/bin/sh"),
            args: &["-c".into(), script.into()],
            env: &[("PATH".into(), "/usr/bin:/bin".into())],
            cwd: Path::new("/"),
            sources,
            named_by,
            run: &[RunMount {
                source: out.path().to_path_buf(),
                name: "out".into(),
                writable: true,
            }],
            user: &user,
            scratch: scratch.path(),
        });
        (finished, out, scratch)
    }

    #[test]
    fn the_script_sees_a_confined_world() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("input"), b"source bytes").unwrap();
        let src_path = fs::canonicalize(src.path()).unwrap();
        let script = format!(
            "echo out > /run/nexus/out/made || exit 10\n\
             echo tmp > /tmp/t && cat /tmp/t >/dev/null || exit 11\n\
             cat {src}/input > /run/nexus/out/copied || exit 12\n\
             if echo x > {src}/planted 2>/dev/null; then exit 13; fi\n\
             if echo x > /etc/nexus-sandbox-probe 2>/dev/null; then exit 14; fi\n\
             if [ -e /proc/{host} ]; then exit 15; fi\n\
             [ \"$$\" -le 3 ] || exit 16\n\
             [ \"$(id -u)\" != 0 ] || exit 17\n\
             grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status || exit 18\n\
             exit 7",
            src = src_path.display(),
            host = std::process::id(),
        );
        let recipe = src_path.join("r.kdl");
        let (code, log, out) = sandboxed(&script, std::slice::from_ref(&src_path), &recipe);
        assert_eq!(
            code, 7,
            "the probe script failed at its check {code}:\n{log}"
        );
        assert_eq!(
            fs::read(out.path().join("copied")).unwrap(),
            b"source bytes"
        );
        assert!(out.path().join("made").is_file());
        assert!(!src_path.join("planted").exists());
        assert!(!Path::new("/etc/nexus-sandbox-probe").exists());
    }

    #[test]
    fn a_script_reaches_no_host_unix_socket_and_passes_no_descriptor_out() {
        let python = Path::new("/usr/bin/python3");
        if !python.exists() {
            eprintln!("skipped: no {}", python.display());
            return;
        }
        // A host daemon's socket outside /run, open to every user, as the
        // relay a reviewer ran in /var/tmp (or /var/lib/mysql/mysql.sock).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("relay.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        let script = format!(
            r#"{python} - <<'PY'
import array, errno, os, socket, sys
out = os.open("/run/nexus/out", os.O_RDONLY | os.O_DIRECTORY)
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("{path}")
    s.sendmsg([b"out"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [out]))])
    sys.exit(10)
except PermissionError:
    pass
# A pipe between the build's own processes still works, descriptors too.
a, b = socket.socketpair()
socket.send_fds(a, [b"x"], [out])
if len(socket.recv_fds(b, 10, 1)[1]) != 1:
    sys.exit(11)
# Connected for good, even once its peer is gone.
a.close()
try:
    b.connect("{path}")
    sys.exit(12)
except OSError:
    pass
# A datagram pair could be pointed at any path with sendto.
try:
    socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sys.exit(13)
except PermissionError:
    pass
# vsock is not confined by the network namespace.
try:
    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sys.exit(14)
except OSError as e:
    if e.errno != errno.EAFNOSUPPORT:
        sys.exit(15)
sys.exit(7)
PY"#,
            python = python.display(),
            path = path.display(),
        );
        let (code, log, _out) = sandboxed(&script, &[], Path::new("/r.kdl"));
        assert_eq!(code, 7, "check {code} failed:\n{log}");
        assert!(
            matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the script reached the host's socket"
        );
    }

    #[test]
    fn sources_below_a_directory_the_build_user_cannot_search_are_reachable() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // /var/tmp/DIR is root's, 0700: the build user cannot pass it.
        let private = tempfile::tempdir_in("/var/tmp").unwrap();
        fs::set_permissions(private.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let src = private.path().join("repo/src");
        fs::create_dir_all(&src).unwrap();
        for d in [private.path().join("repo"), src.clone()] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(private.path().join("repo/secret"), b"not a source").unwrap();
        fs::write(src.join("input"), b"source bytes").unwrap();
        let script = format!(
            "cat {src}/input > /run/nexus/out/copied || exit 10\n\
             if ls {dir}/repo/secret 2>/dev/null; then exit 11; fi\n\
             exit 7",
            src = src.display(),
            dir = private.path().display(),
        );
        // The recipe is inside the private directory too, as the Rumk
        // recipe is when the repository lives under /root.
        let recipe = private.path().join("repo/recipes/r.kdl");
        let (code, log, out) = sandboxed(&script, std::slice::from_ref(&src), &recipe);
        assert_eq!(code, 7, "check {code} failed:\n{log}");
        assert_eq!(
            fs::read(out.path().join("copied")).unwrap(),
            b"source bytes"
        );
    }

    #[test]
    fn a_recipe_outside_a_private_directory_gets_nothing_below_it_bound() {
        if !nix::unistd::geteuid().is_root() {
            return; // an unprivileged caller's build reaches what it can
        }
        // The reviewer's layout, below /var/tmp and below /tmp (bound
        // into the private /tmp whatever the directories above): a
        // third-party recipe in a world-readable recipes directory names
        // `../../priv/pub`, where priv is root's, 0700, and pub/secret
        // is 0644.
        for top in ["/var/tmp", "/tmp"] {
            let base = tempfile::tempdir_in(top).unwrap();
            let base_path = fs::canonicalize(base.path()).unwrap();
            let recipes = base_path.join("a3/recipes");
            let private = base_path.join("priv");
            let public = private.join("pub");
            fs::create_dir_all(&recipes).unwrap();
            fs::create_dir_all(&public).unwrap();
            for (d, mode) in [
                (&base_path, 0o755),
                (&base_path.join("a3"), 0o755),
                (&recipes, 0o755),
                (&private, 0o700),
                (&public, 0o755),
            ] {
                fs::set_permissions(d, fs::Permissions::from_mode(mode)).unwrap();
            }
            fs::write(public.join("secret"), b"root's secret").unwrap();
            fs::set_permissions(public.join("secret"), fs::Permissions::from_mode(0o644)).unwrap();
            let script = format!(
                "cp -r {public} /run/nexus/out/loot; exit 7",
                public = public.display()
            );
            let sources = [recipes.clone(), public.clone()];
            let (result, out, _scratch) = attempt(&script, &sources, &recipes.join("tool.kdl"));
            match result {
                Err(SandboxError::Private { path, dir, .. }) => {
                    assert_eq!((path, dir), (public.clone(), private.clone()), "{top}");
                }
                Ok(f) => panic!(
                    "{top}: the script ran with {} bound (exit {}):\n{}",
                    public.display(),
                    f.code,
                    fs::read_to_string(&f.log).unwrap_or_default()
                ),
                Err(e) => panic!("{top}: {e}"),
            }
            assert!(!out.path().join("loot").exists(), "{top}");
            // The message names both.
            let message = check_named(
                &public,
                &recipes.join("tool.kdl"),
                &BuildUser::default_user().unwrap(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                message.contains(&*public.to_string_lossy())
                    && message.contains(&format!("below {},", private.display())),
                "{message}"
            );

            // A recipe inside priv, but not inside a private directory
            // within it, is refused that one.
            let inner = private.join("inner");
            fs::create_dir_all(inner.join("pub")).unwrap();
            fs::set_permissions(&inner, fs::Permissions::from_mode(0o700)).unwrap();
            let err = check_named(
                &inner.join("pub"),
                &private.join("recipes/tool.kdl"),
                &BuildUser::default_user().unwrap(),
            )
            .unwrap_err();
            assert!(
                matches!(&err, SandboxError::Private { dir, .. } if *dir == inner),
                "{err}"
            );
            // From inside priv, pub is the recipe's author's own.
            check_named(
                &public,
                &private.join("recipes/tool.kdl"),
                &BuildUser::default_user().unwrap(),
            )
            .unwrap();
        }
    }

    #[test]
    fn an_unprivileged_caller_gets_the_same_confinement() {
        if !nix::unistd::geteuid().is_root() {
            return; // this very test, run as another user, is the point
        }
        // The probe above, run by this test binary as nobody: the sandbox
        // then needs a user namespace of its own.
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "sandbox::tests::the_script_sees_a_confined_world",
                "--test-threads=1",
            ])
            .current_dir("/")
            .env("TMPDIR", "/tmp")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_setup_failure_is_named() {
        let scratch = tempfile::tempdir().unwrap();
        let err = run(&Sandbox {
            program: Path::new("/no/such/program"),
            args: &[],
            env: &[],
            cwd: Path::new("/"),
            sources: &[],
            named_by: Path::new("/r.kdl"),
            run: &[],
            user: &BuildUser::default_user().unwrap(),
            scratch: scratch.path(),
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("executing /no/such/program"),
            "{err}"
        );
        let err = run(&Sandbox {
            program: Path::new("/bin/true"),
            args: &[],
            env: &[],
            cwd: Path::new("/"),
            sources: &[PathBuf::from("/run/secrets")],
            named_by: Path::new("/run/r.kdl"),
            run: &[],
            user: &BuildUser::default_user().unwrap(),
            scratch: scratch.path(),
        })
        .unwrap_err();
        assert!(matches!(err, SandboxError::Masked { .. }), "{err}");
    }
}
