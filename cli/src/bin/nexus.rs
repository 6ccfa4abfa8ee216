//! The `nexus` binary: see `nexus --help`.

use nexus_cli::nexus::{Cli, mount_helper, run};
use nexus_cli::report;

fn main() {
    // The mount daemon allocates and frees a ~1 MiB buffer per decoded
    // block. glibc raises its mmap threshold after the first such free, and
    // from then on keeps those buffers in its heaps, where they fragment
    // and hold hundreds of MB after a full walk. A fixed threshold keeps
    // large buffers in mmap, returned to the kernel when freed.
    // SAFETY: mallopt only changes allocator tuning; called before any
    // thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) };
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = args.first().cloned().unwrap_or_default();
    let program = std::path::Path::new(&argv0)
        .file_name()
        .unwrap_or(&argv0)
        .to_os_string();
    if mount_helper::is_helper(&argv0) {
        // mount(8)'s helper: `mount.fuse.nexus SOURCE DIR -o OPTIONS`.
        args = match mount_helper::translate(&args[1..]) {
            Ok(args) => args,
            Err(mount_helper::Refusal::Fake) => std::process::exit(0),
            Err(mount_helper::Refusal::Usage(message)) => {
                eprintln!("{}: {message}", program.to_string_lossy());
                std::process::exit(1);
            }
        };
    } else if program == "nexus-virtiofsd" {
        // The vhost-user backend as QEMU's vhost-user.json names it: the
        // options of `nexus serve` without the command.
        args.splice(1..1, [std::ffi::OsString::from("serve")]);
    }
    let code = report::main_with_args("nexus", args, |cli: Cli| run(cli), nexus_cli::hints::hint);
    std::process::exit(code);
}
