//! /proc and sock_diag parsing in fdinfo.rs: lines of /proc/PID/net/{tcp,tcp6,udp,udp6,unix},
//! readlink texts of /proc/PID/fd entries, and netlink replies. Targets that come out are
//! displayed too, as reports do. Seeds are this machine's own tables (`cargo xtask fuzz`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use profiler::offcpu::fdinfo::{FdTarget, Link, parse_inet_line, parse_link, parse_unix_line, unix_diag};

fuzz_target!(|data: &[u8]| {
    let inode = data.get(..4).map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()) as u64);
    if let Some(reply) = unix_diag::parse_reply(data, inode) {
        let _ = format!("{reply:?}");
    }
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        if let Some((_, local, remote)) = parse_inet_line(line) {
            let _ = FdTarget::Tcp { local, peer: remote }.to_string();
            let _ = FdTarget::Udp { local, peer: Some(remote) }.to_string();
        }
        if let Some((_, path)) = parse_unix_line(line) {
            let _ = FdTarget::Unix { path }.to_string();
        }
        if let Link::Known(target) = parse_link(line) {
            let _ = target.to_string();
        }
    }
});
