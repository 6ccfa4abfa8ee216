//! The `nexus` binary: see `nexus --help`.

use nexus_cli::nexus::{Cli, run};
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
    let code = report::main("nexus", |cli: Cli| run(cli), nexus_cli::hints::hint);
    std::process::exit(code);
}
