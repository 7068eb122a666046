//! The cost of one read of the TCP socket table at 100, 1,000 and 10,000 sockets: the netlink
//! sock_diag dump medic reads, against the text tables it replaces (`/proc/net/tcp{,6}` read to
//! their end and parsed; and, for the record, the single `read()` medic used to do, which is
//! cheap only because it stops after ~26 sockets). Loopback connections held by this process;
//! run it in a network namespace of its own so that the machine's other sockets do not count:
//! `bash bench/socket_scan.sh`. Results in docs/BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use medic::signals::sock_diag::SockDiag;
use medic::signals::sockets::{from_netlink, from_text, parse_tcp_table, SocketTable};
use std::hint::black_box;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::Path;

/// Holds `n` sockets: `n / 2` loopback connections (both ends).
struct Load {
    _streams: Vec<TcpStream>,
}

fn load(n: usize, l: &TcpListener) -> Load {
    let mut v = Vec::with_capacity(n);
    while v.len() + 2 <= n {
        v.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        v.push(l.accept().unwrap().0);
    }
    Load { _streams: v }
}

fn bench(c: &mut Criterion) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: lim.maximum, maximum: lim.maximum }).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut diag = SockDiag::open().expect("netlink sock_diag");
    let mut g = c.benchmark_group("socket_scan");
    g.sample_size(30);
    for n in [100usize, 1_000, 10_000] {
        let held = load(n, &l);
        let total = from_netlink(&mut diag).unwrap().counts.iter().sum::<u64>();
        eprintln!("socket_scan/{n}: {total} sockets in the table");
        g.bench_with_input(BenchmarkId::new("netlink_sock_diag", n), &n, |b, _| b.iter(|| black_box(from_netlink(&mut diag).unwrap())));
        g.bench_with_input(BenchmarkId::new("proc_net_tcp_to_eof", n), &n, |b, _| {
            b.iter(|| {
                let mut errors = Vec::new();
                black_box(from_text(Path::new("/proc"), &mut errors))
            })
        });
        g.bench_with_input(BenchmarkId::new("proc_net_tcp_single_read_incomplete", n), &n, |b, _| {
            let mut buf = vec![0u8; 256 * 1024];
            b.iter(|| {
                let mut t = SocketTable::default();
                for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
                    let k = std::fs::File::open(f).unwrap().read(&mut buf).unwrap();
                    let _ = parse_tcp_table(Path::new(f), std::str::from_utf8(&buf[..k]).unwrap_or(""), &mut t);
                }
                black_box(t)
            })
        });
        drop(held);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
