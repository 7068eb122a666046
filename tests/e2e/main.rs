//! medic's end-to-end tests: one binary, a flat module per area. They run the real `medic`
//! binary and the library on real files, real processes and fixture /proc trees.

mod acting;
mod actions_hostile;
mod alerts;
mod audit;
mod cli;
mod container;
mod ebpf;
mod explain;
mod history;
mod hostile;
mod hostile_ops;
mod maintenance;
mod metrics;
mod mqtt;
mod notify;
mod package;
mod playbooks;
mod probes;
mod procs;
mod replay;
mod scale;
mod sensors;
mod signals;
mod sockets;
mod systemd;
mod util;
mod wake;
