//! mount(8) and fstab: with the helper `mount.fuse.nexus` where mount(8)
//! looks for helpers (a link to the nexus under test, as the .deb ships
//! it), `mount -t fuse.nexus STORE DIR -o ...` and an fstab line of type
//! `fuse.nexus` used through `mount DIR` mount the store, with the Index;
//! findmnt shows the type `fuse.nexus` with the store as the source; files
//! read; generic options (noauto, nofail, _netdev, x-systemd.*) are
//! ignored; `umount` unmounts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nexus_integration_tests::fixtures::{Scratch, write_file};
use nexus_integration_tests::nexus::{is_mounted, show, wait_for};
use nexus_integration_tests::{Store, nexus_bin, root_or_skip};

/// Where mount(8) looks for `mount.TYPE` helpers (`/sbin`, which is
/// `/usr/sbin` on a merged-/usr system).
const HELPER: &str = "/sbin/mount.fuse.nexus";

/// Puts the helper in place for the test and restores what was there.
struct Helper {
    saved: Option<PathBuf>,
}

impl Helper {
    fn install(scratch: &Scratch) -> Helper {
        let helper = Path::new(HELPER);
        let saved = fs::symlink_metadata(helper).is_ok().then(|| {
            let aside = scratch.join("mount.fuse.nexus.saved");
            fs::rename(helper, &aside).expect("moving the installed helper aside");
            aside
        });
        std::os::unix::fs::symlink(nexus_bin(), helper).expect("linking the helper");
        Helper { saved }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = fs::remove_file(HELPER);
        if let Some(saved) = &self.saved {
            let _ = fs::rename(saved, HELPER);
        }
    }
}

/// Detaches whatever is still mounted on drop (a failing test).
struct Unmount(Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for point in &self.0 {
            if is_mounted(point) {
                let _ = Command::new("umount").arg("-l").arg(point).status();
            }
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.env("NEXUS_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// findmnt's view of the mount at `point`: (fstype, source).
fn findmnt(point: &Path) -> (String, String) {
    let out = run(Command::new("findmnt").arg("-J").arg(point));
    assert!(
        out.status.success(),
        "findmnt {}: {}",
        point.display(),
        show(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fs = &json["filesystems"][0];
    (
        fs["fstype"].as_str().unwrap().to_string(),
        fs["source"].as_str().unwrap().to_string(),
    )
}

/// Checks the mounts of `store` on `point` and `index`, then unmounts both
/// with umount(8).
fn check_and_umount(store: &Path, point: &Path, index: &Path) {
    assert!(is_mounted(point), "{} is not mounted", point.display());
    assert_eq!(
        findmnt(point),
        (
            "fuse.nexus".to_string(),
            store.to_str().unwrap().to_string()
        )
    );
    assert_eq!(
        findmnt(index),
        (
            "fuse.nexus-index".to_string(),
            store.to_str().unwrap().to_string()
        )
    );
    assert_eq!(
        fs::read(point.join("tool/1/bin/tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    assert_eq!(
        fs::read_link(index.join("bin/tool")).unwrap(),
        point.join("tool/Current/bin/tool")
    );
    let options = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = options
        .lines()
        .find(|l| l.split(' ').nth(4) == point.to_str())
        .unwrap();
    assert!(line.contains("allow_other"), "{line}");
    for dir in [index, point] {
        let out = run(Command::new("umount").arg(dir));
        assert!(
            out.status.success(),
            "umount {}: {}",
            dir.display(),
            show(&out)
        );
    }
    assert!(
        wait_for(Duration::from_secs(5), || !is_mounted(point)
            && !is_mounted(index)),
        "still mounted after umount"
    );
}

#[test]
fn mount_t_fuse_nexus_and_an_fstab_line_mount_the_store() {
    if !root_or_skip("mount_t_fuse_nexus_and_an_fstab_line_mount_the_store") {
        return;
    }
    let scratch = Scratch::new("fstab");
    write_file(&scratch.join("tool/bin/tool"), b"#!/bin/sh\necho tool\n");
    let store = Store::init();
    store.add_dir(&scratch.join("tool"), "tool", "1");
    let store_dir = fs::canonicalize(store.path()).unwrap();
    let point = scratch.join("Programs");
    let index = scratch.join("Index");
    fs::create_dir_all(&point).unwrap();
    fs::create_dir_all(&index).unwrap();
    let (point, index) = (
        fs::canonicalize(point).unwrap(),
        fs::canonicalize(index).unwrap(),
    );
    let _helper = Helper::install(&scratch);
    let _unmount = Unmount(vec![index.clone(), point.clone()]);
    let options = format!(
        "ro,allow_other,index={},noauto,nofail,_netdev,x-systemd.automount,defaults",
        index.display()
    );

    // mount -t fuse.nexus STORE DIR -o OPTIONS
    let out = run(Command::new("mount")
        .args(["-t", "fuse.nexus"])
        .arg(&store_dir)
        .arg(&point)
        .arg("-o")
        .arg(&options));
    assert!(out.status.success(), "mount -t fuse.nexus: {}", show(&out));
    check_and_umount(&store_dir, &point, &index);

    // An unknown option is refused, and nothing is mounted.
    let out = run(Command::new("mount")
        .args(["-t", "fuse.nexus"])
        .arg(&store_dir)
        .arg(&point)
        .args(["-o", "ro,frobnicate"]));
    assert!(!out.status.success(), "an unknown option was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("frobnicate"),
        "{}",
        show(&out)
    );
    assert!(!is_mounted(&point));

    // The same as an fstab line, used by `mount DIR`.
    let fstab = scratch.join("fstab");
    fs::write(
        &fstab,
        format!(
            "# the Nexus store\n{} {} fuse.nexus {options} 0 0\n",
            store_dir.display(),
            point.display()
        ),
    )
    .unwrap();
    let out = run(Command::new("mount").arg("--fstab").arg(&fstab).arg(&point));
    assert!(out.status.success(), "mount --fstab: {}", show(&out));
    check_and_umount(&store_dir, &point, &index);
}
