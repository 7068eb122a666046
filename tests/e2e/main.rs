//! medic's end-to-end tests: one binary, a flat module per area. They run the real `medic`
//! binary and the library on real files, real processes and fixture /proc trees.

mod acting;
mod actions_hostile;
mod audit;
mod cli;
mod container;
mod ebpf;
mod explain;
mod history;
mod hostile;
mod hostile_ops;
mod metrics;
mod mqtt;
mod notify;
mod package;
mod playbooks;
mod procs;
mod replay;
mod scale;
mod signals;
mod sockets;
mod systemd;
mod util;
