//! Stamps the binary with its git revision and build date for `p2pnode --version`, and
//! lays out a release binary's hot path (`hot-path.txt`) on adjacent pages.
//!
//! Without git (a tarball build) both still come out: the revision as "unknown". Reruns
//! only when HEAD moves (its file, the branch ref it names, packed refs) or the list
//! changes, not on every source change, so an edit-build cycle does not pay for it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let rev = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    watch_head();
    println!("cargo:rustc-env=P2PNODE_GIT_REV={rev}");
    println!("cargo:rustc-env=P2PNODE_BUILD_DATE={}", build_date());
    order_hot_path();
}

/// Asks the linker to place the functions in `hot-path.txt` (the tunnel's data thread,
/// as profiled by `scripts/hot-path`) next to each other. A lone packet after a quiet
/// spell runs that code cold, and spread over a 30 MB text it sat on 31 pages; packed, on
/// 12 or 13 (as the code around it moves), so fewer misses in the instruction TLB and
/// caches.
///
/// Only for a release build on x86_64 Linux with rustc's own linker (lld, the default
/// there since Rust 1.90 where the toolchain ships it): the file names release symbols,
/// and GNU ld does not take the flag. A name the build no longer has is skipped without a
/// word, so a stale file costs only the layout; `scripts/hot-path --check` (which
/// `scripts/bench-vpn` prints) says how many names still match.
fn order_hot_path() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    println!("cargo:rerun-if-changed=hot-path.txt");
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let own_linker = std::env::var_os("RUSTC_LINKER").is_some()
        || flags.contains("linker")
        || flags.contains("link-self-contained");
    let target = var("TARGET");
    if target != "x86_64-unknown-linux-gnu"
        || var("PROFILE") != "release"
        || own_linker
        || !ships_lld(&target)
    {
        return;
    }
    let file = PathBuf::from(var("CARGO_MANIFEST_DIR")).join("hot-path.txt");
    if file.exists() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            file.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Runs git in the package directory; `None` when git is missing or this is no checkout.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// Asks cargo to rerun when HEAD moves. In a worktree HEAD lives in the worktree's git
/// dir and the branch refs in the common dir, so both are asked for.
fn watch_head() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { here.join(p) }
    };
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(abs) else {
        return;
    };
    let common = git(&["rev-parse", "--git-common-dir"])
        .map(abs)
        .unwrap_or_else(|| git_dir.clone());
    let mut watched = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common.join(branch));
    }
    // A path that does not exist would make cargo rerun the script on every build.
    for path in watched.iter().filter(|p| Path::exists(p)) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Today's date (UTC), or that of `SOURCE_DATE_EPOCH` for reproducible builds.
fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        });
    let Some(secs) = secs else {
        return "unknown".into();
    };
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm), to need no
    // date crate for one line of output.
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Whether the toolchain has its own lld for `target` (a distribution's rustc may not, and
/// then links with the system's linker).
fn ships_lld(target: &str) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    sysroot
        .join("lib/rustlib")
        .join(target)
        .join("bin/gcc-ld/ld.lld")
        .exists()
}
