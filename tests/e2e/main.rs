//! medic's end-to-end tests: one binary, a flat module per area. They run the real `medic`
//! binary and the library on real files, real processes and fixture /proc trees.

mod acting;
mod audit;
mod cli;
mod ebpf;
mod mqtt;
mod playbooks;
mod signals;
mod systemd;
mod util;

/// Polls `f` every 100 ms for up to `secs` seconds.
pub fn acting_wait(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// The forwarder's persisted cursor in a state dir.
pub fn util_cursor(state: &std::path::Path) -> u64 {
    medic::forward::read_cursor(state)
}
