//! Round trips, damage, rotation, retention and export of the flight recorder.

use super::*;
use crate::signals::disk::Mount;
use crate::signals::ebpf::{sched::RunqEntry, tcp::RetransEntry};
use crate::signals::process::{ProcessInfo, UnitInfo};
use crate::signals::sockets::PeerInfo;
use crate::signals::wake::Wake;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const T0: i64 = 1_700_000_000_000;

/// A snapshot at tick `i` that changes a bit of everything: metrics set, changed and gone,
/// processes started, changing and exiting (and a reused pid), units, mounts, peers, eBPF
/// entries, unavailable families, errors and the socket source; awkward floats included.
fn snap(i: i64) -> Snapshot {
    let mut s = Snapshot { ts_ms: T0 + i * 1000, ..Default::default() };
    s.metrics.insert("cpu.count".into(), 16.0);
    s.metrics.insert("cpu.util_pct".into(), (i as f64 * 7.3) % 100.0);
    s.metrics.insert("mem.available_bytes".into(), 8e9 - (i as f64) * 4096.0);
    s.metrics.insert("odd.neg_zero".into(), if i % 2 == 0 { 0.0 } else { -0.0 });
    s.metrics.insert("odd.tiny".into(), f64::MIN_POSITIVE / (1 + i % 3) as f64);
    s.metrics.insert("odd.huge".into(), f64::MAX);
    s.metrics.insert("odd.inf".into(), f64::INFINITY);
    if i % 5 != 3 {
        s.metrics.insert("disk./.used_pct".into(), 50.0 + (i / 4) as f64);
    }
    for k in 0..(i % 7) {
        s.metrics.insert(format!("proc.{}.cpu_pct", 1000 + k), (k * i) as f64 / 3.0);
    }
    for pid in [1, 2, 50 + i % 4, 100] {
        s.processes.push(ProcessInfo {
            pid,
            name: format!("p{pid}"),
            cmdline: format!("/bin/p{pid} --tick {}", i / 10),
            unit: (pid % 2 == 0).then(|| format!("u{pid}.service")),
            cpu_pct: if i == 0 { None } else { Some(i as f64 * 0.1 + pid as f64) },
            // RSS moves up and down (coded as a difference), once in a while to the extremes.
            rss_bytes: match (pid, i % 5) {
                (2, 0) => u64::MAX,
                (2, 1) => 0,
                _ => (1 << 20) + ((i * 37 + pid) % 11) as u64 * 4096,
            },
            fds: if pid == 2 { None } else { Some(10 + (i / 3) as u64) },
            threads: 1,
            // pid 100 is reused every 6 ticks: a new start time, the same pid.
            start_time: 1_600_000_000 + if pid == 100 { (i / 6) as u64 } else { 0 },
            state: if i % 4 == 0 { "R".into() } else { "S".into() },
            tcp: if pid == 1 { [("ESTABLISHED".to_string(), (i % 3) as u64)].into() } else { Default::default() },
            // The tree changes: pid 100 moves between parents, its limit is raised now and then.
            ppid: match pid {
                1 => 0,
                100 => [1, 2, 50 + i % 4][(i % 3) as usize],
                _ => 1,
            },
            fd_limit: match (pid, i % 7) {
                (2, _) => None,
                (100, 0..=2) => Some(1024),
                _ => Some(524_288),
            },
            ..Default::default()
        });
    }
    s.processes.sort_by_key(|p| (p.pid, p.start_time));
    // What the reader derives, the sampler derived too.
    crate::signals::process::derive_tree(&mut s.processes);
    s.units.insert(
        "a.service".into(),
        UnitInfo { unit: "a.service".into(), processes: 2, cpu_pct: i as f64 / 2.0, memory_bytes: Some(5), ..Default::default() },
    );
    if i % 3 == 0 {
        s.units.insert("b.service".into(), UnitInfo { unit: "b.service".into(), cpu_pct: -0.0, ..Default::default() });
    }
    s.mounts.push(Mount { device: "/dev/sda1".into(), mount_point: "/".into(), fs_type: "ext4".into() });
    if i > 10 {
        s.mounts.push(Mount { device: "tmpfs".into(), mount_point: "/run/x".into(), fs_type: "tmpfs".into() });
    }
    s.socket_source = ["", "netlink", "procfs"][(i % 3) as usize];
    if i % 4 == 1 {
        s.tcp_peers.push(PeerInfo { peer: "10.0.0.1:443".into(), sockets: 3, retransmitting: 1, timeouts: i as u64 });
    }
    s.ebpf_retrans.push(RetransEntry { peer: "[::1]:80".into(), local_port: 4000, pid: 50, cgroup: 7, count: (i / 2) as u64 });
    s.ebpf_runq.push(RunqEntry {
        cgroup: 7,
        path: Some("/system.slice/a.service".into()),
        unit: Some("a.service".into()),
        p50_us: (i % 2 == 0).then_some(12.5),
        p99_us: Some(100.0 + i as f64),
        total_p99_us: None,
        total_samples: i as u64,
    });
    if i % 6 < 3 {
        s.unavailable.insert("psi.cpu".into(), "kernel has no PSI here".into());
    }
    if i % 8 == 7 {
        s.errors.push(format!("/proc/stat:1: cpu: bad field {i}"));
    }
    s
}

fn cfg() -> RecorderConfig {
    RecorderConfig { flush_secs: 3, ..Default::default() }
}

fn read_all(path: &Path) -> Vec<Frame> {
    read(path, None, None).unwrap().map(|f| f.unwrap()).collect()
}

/// Compares bit for bit (Snapshot's `==` takes 0.0 for -0.0), and by value.
/// Frames 4 and 13 woken by everything (what version 3 recorded), 22 by a disk and a tcp event.
fn woken(i: usize) -> Wake {
    match i % 9 {
        4 if i < 20 => Wake::ALL,
        4 => Wake::DISK | Wake::TCP,
        _ => Wake::NONE,
    }
}

fn assert_same(got: &Frame, want: &Snapshot, forced: Wake) {
    assert_eq!(got.forced, forced);
    assert_eq!(&got.snap, want, "at {}", want.ts_ms);
    let bits = |s: &Snapshot| s.metrics.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&got.snap), bits(want));
    let ubits = |s: &Snapshot| s.units.values().map(|u| u.cpu_pct.to_bits()).collect::<Vec<_>>();
    assert_eq!(ubits(&got.snap), ubits(want));
}

#[test]
fn varied_snapshots_read_back_equal_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = dir.path().join("recording");
    let mut r = Recorder::open(&rec_dir, &cfg()).unwrap();
    let snaps: Vec<Snapshot> = (0..60).map(snap).collect();
    for (i, s) in snaps.iter().enumerate() {
        r.record(s, woken(i)).unwrap();
    }
    r.close().unwrap();
    let got = read_all(&rec_dir);
    assert_eq!(got.len(), snaps.len());
    for (i, (g, w)) in got.iter().zip(&snaps).enumerate() {
        assert_same(g, w, woken(i));
    }
    // Modes: the directory 0700, segments 0600.
    assert_eq!(std::fs::metadata(&rec_dir).unwrap().permissions().mode() & 0o777, 0o700);
    for (_, _, p, _) in format::list_segments(&rec_dir).unwrap() {
        assert_eq!(std::fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn a_process_list_not_sorted_by_pid_reads_back_in_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Recorder::open(dir.path(), &cfg()).unwrap();
    let mut snaps = Vec::new();
    for i in 0..12 {
        let mut s = snap(i);
        if i % 2 == 1 {
            s.processes.reverse();
        }
        r.record(&s, Wake::NONE).unwrap();
        snaps.push(s);
    }
    r.close().unwrap();
    let got = read_all(dir.path());
    assert_eq!(got.iter().map(|f| f.snap.clone()).collect::<Vec<_>>(), snaps);
}

#[test]
fn frames_are_readable_once_flushed_while_the_writer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Recorder::open(dir.path(), &RecorderConfig { flush_secs: 10, ..Default::default() }).unwrap();
    for i in 0..5 {
        r.record(&snap(i), Wake::NONE).unwrap();
    }
    // Held in memory for up to flush_secs of the recorded clock.
    assert_eq!(read_all(dir.path()).len(), 0);
    for i in 5..11 {
        r.record(&snap(i), Wake::NONE).unwrap();
    }
    // The 11th frame is 10 s after the first held one: the block went out.
    assert_eq!(read_all(dir.path()).len(), 11);
    r.record(&snap(11), Wake::NONE).unwrap();
    r.flush().unwrap();
    assert_eq!(read_all(dir.path()).len(), 12);
}

#[test]
fn a_torn_tail_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Recorder::open(dir.path(), &cfg()).unwrap();
    for i in 0..20 {
        r.record(&snap(i), Wake::NONE).unwrap();
    }
    r.close().unwrap();
    let seg = format::list_segments(dir.path()).unwrap().remove(0).2;
    let whole = read_all(dir.path()).len();
    let len = std::fs::metadata(&seg).unwrap().len();
    // Cut inside the last block, then inside a block header, then append zeros (power loss).
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 5).unwrap();
    let cut = read_all(dir.path());
    assert!(cut.len() < whole && !cut.is_empty(), "{} of {whole}", cut.len());
    for (i, g) in cut.iter().enumerate() {
        assert_same(g, &snap(i as i64), Wake::NONE);
    }
    f.set_len(format::HEADER_LEN + 3).unwrap();
    assert_eq!(read_all(dir.path()).len(), 0);
    f.set_len(format::HEADER_LEN + 64).unwrap();
    assert_eq!(read_all(dir.path()).len(), 0);
}

#[test]
fn a_corrupt_block_is_an_error_naming_file_and_offset_and_later_segments_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let c = RecorderConfig { flush_secs: 3, segment_secs: 60, ..Default::default() };
    let mut r = Recorder::open(dir.path(), &c).unwrap();
    for i in 0..130 {
        r.record(&snap(i), Wake::NONE).unwrap();
    }
    r.close().unwrap();
    let segs = format::list_segments(dir.path()).unwrap();
    assert_eq!(segs.len(), 3);
    let first = &segs[0].2;
    let mut bytes = std::fs::read(first).unwrap();
    let at = format::HEADER_LEN as usize + 8 + 5;
    bytes[at] ^= 0xff;
    std::fs::write(first, &bytes).unwrap();
    let all: Vec<_> = read(dir.path(), None, None).unwrap().collect();
    let errs: Vec<_> = all.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errs.len(), 1);
    match errs[0] {
        RecorderError::Corrupt { path, offset, reason } => {
            assert_eq!(path, first);
            assert_eq!(*offset, format::HEADER_LEN);
            assert!(reason.contains("checksum"), "{reason}");
        }
        e => panic!("{e}"),
    }
    assert_eq!(errs[0].code(), "recorder_corrupt");
    // Segments 2 and 3 (ticks 60..130) start with key frames and read whole.
    let ok: Vec<_> = all.into_iter().filter_map(Result::ok).collect();
    assert_eq!(ok.len(), 70);
    for g in &ok {
        assert_same(g, &snap((g.snap.ts_ms - T0) / 1000), Wake::NONE);
    }

    // A block claiming more than the limit, and a file that is not a recording.
    let mut bad = format::header().to_vec();
    bad.extend_from_slice(&u32::MAX.to_le_bytes());
    bad.extend_from_slice(&[0; 4]);
    let p = dir.path().join("bad.mrec");
    std::fs::write(&p, &bad).unwrap();
    let e = read(&p, None, None).unwrap().next().unwrap().unwrap_err();
    assert!(matches!(e, RecorderError::Corrupt { offset: 12, .. }), "{e}");
    std::fs::write(&p, b"hello, world, not a recording").unwrap();
    let e = read(&p, None, None).unwrap().next().unwrap().unwrap_err();
    assert_eq!(e.code(), "recorder_format");
}

#[test]
fn segments_rotate_by_time_each_with_a_key_frame_and_old_ones_are_removed_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let c = RecorderConfig { flush_secs: 5, segment_secs: 60, max_age_secs: 120, ..Default::default() };
    let mut r = Recorder::open(dir.path(), &c).unwrap();
    for i in 0..150 {
        r.record(&snap(i), Wake::NONE).unwrap();
    }
    let segs = format::list_segments(dir.path()).unwrap();
    assert_eq!(segs.iter().map(|s| s.0).collect::<Vec<_>>(), [T0, T0 + 60_000, T0 + 120_000]);
    // Each segment reads on its own: it starts with a key frame.
    for (ts, _, p, _) in &segs[..2] {
        let f = read_all(p);
        assert_eq!(f.len(), 60);
        assert_same(&f[0], &snap((ts - T0) / 1000), Wake::NONE);
    }
    // At 300 s the first two segments (ending at 60 s and 120 s) are older than 120 s.
    for i in 150..301 {
        r.record(&snap(i), Wake::NONE).unwrap();
    }
    r.close().unwrap();
    let segs = format::list_segments(dir.path()).unwrap();
    assert_eq!(segs.iter().map(|s| s.0).collect::<Vec<_>>(), [T0 + 120_000, T0 + 180_000, T0 + 240_000, T0 + 300_000]);
    let got = read(dir.path(), Some(T0 + 200_000), Some(T0 + 210_000)).unwrap().map(|f| f.unwrap().snap.ts_ms).collect::<Vec<_>>();
    assert_eq!(got, (200..=210).map(|i| T0 + i * 1000).collect::<Vec<_>>());
}

/// Metrics no compressor can shrink, so that size rotation happens.
fn noisy(i: i64, keys: usize) -> Snapshot {
    let mut s = Snapshot { ts_ms: T0 + i * 1000, ..Default::default() };
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for k in 0..keys {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.metrics.insert(format!("m.{k}"), (x >> 11) as f64 / 3.0);
    }
    s
}

#[test]
fn the_oldest_segments_go_when_the_directory_would_hold_more_than_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let c = RecorderConfig { flush_secs: 1, max_bytes: 1 << 20, ..Default::default() };
    assert_eq!(c.segment_bytes(), 128 << 10);
    let mut r = Recorder::open(dir.path(), &c).unwrap();
    for i in 0..400 {
        r.record(&noisy(i, 1000), Wake::NONE).unwrap();
        let total: u64 = format::list_segments(dir.path()).unwrap().iter().map(|s| s.3).sum();
        // One block (about 9 KiB here) over the segment size at most.
        assert!(total <= c.max_bytes + (16 << 10), "{total} at {i}");
    }
    r.close().unwrap();
    let segs = format::list_segments(dir.path()).unwrap();
    assert!(segs.len() >= 7 && segs[0].0 > T0, "{segs:?}");
    // What is left reads whole, from the first kept frame to the last.
    let got = read_all(dir.path());
    assert_eq!(got.last().unwrap().snap, noisy(399, 1000));
    assert_eq!(got[0].snap, noisy((segs[0].0 - T0) / 1000, 1000));
}

#[test]
fn an_export_is_one_self_contained_segment_of_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let c = RecorderConfig { flush_secs: 4, segment_secs: 60, ..Default::default() };
    let mut r = Recorder::open(&dir.path().join("rec"), &c).unwrap();
    for i in 0..200 {
        r.record(&snap(i), if i == 77 { Wake::TCP } else { Wake::NONE }).unwrap();
    }
    r.flush().unwrap();
    let dest = dir.path().join("incident.mrec");
    let sum = export(&dir.path().join("rec"), Some(T0 + 70_000), Some(T0 + 130_000), &dest).unwrap();
    assert_eq!((sum.frames, sum.first_ms, sum.last_ms), (61, Some(T0 + 70_000), Some(T0 + 130_000)));
    assert_eq!(sum.bytes, std::fs::metadata(&dest).unwrap().len());
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
    let got = read_all(&dest);
    assert_eq!(got.len(), 61);
    for g in &got {
        let i = (g.snap.ts_ms - T0) / 1000;
        assert_same(g, &snap(i), if i == 77 { Wake::TCP } else { Wake::NONE });
    }
    // An empty range still writes a valid (empty) recording.
    let empty = dir.path().join("empty.mrec");
    assert_eq!(export(&dir.path().join("rec"), Some(0), Some(1), &empty).unwrap().frames, 0);
    assert_eq!(read_all(&empty).len(), 0);
}

#[test]
fn config_defaults_and_bounds() {
    let c = crate::config::Config::parse("m.toml", "").unwrap();
    assert_eq!(c.recorder, RecorderConfig::default());
    assert!(c.recorder.enabled && c.recorder.max_bytes == 64 << 20 && c.recorder.max_age_secs == 86_400);
    assert_eq!(c.recorder.dir_in(Path::new("/var/lib/medic")), Path::new("/var/lib/medic/recording"));
    let e = crate::config::Config::parse("m.toml", "[recorder]\nmax_bytes = 10\n").unwrap_err();
    assert!(e.line == 2 && e.reason.contains("recorder.max_bytes"), "{e}");
    let e = crate::config::Config::parse("m.toml", "[recorder]\nflush = 10\n").unwrap_err();
    assert!(e.reason.contains("unknown field"), "{e}");
    let c = crate::config::Config::parse("m.toml", "[recorder]\nenabled = false\ndir = \"/tmp/r\"\nflush_secs = 30\n").unwrap();
    assert!(!c.recorder.enabled && c.recorder.flush_secs == 30);
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    fn valid_segment() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::open(dir.path(), &RecorderConfig { flush_secs: 2, ..Default::default() }).unwrap();
        for i in 0..12 {
            r.record(&snap(i), Wake::NONE).unwrap();
        }
        r.close().unwrap();
        std::fs::read(format::list_segments(dir.path()).unwrap().remove(0).2).unwrap()
    }

    fn read_bytes(bytes: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.mrec");
        std::fs::write(&p, bytes).unwrap();
        // Every item is a frame or an error; the iterator ends.
        let n = read(&p, None, None).unwrap().take(10_000).count();
        assert!(n < 10_000);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_after_a_header_never_panic_the_reader(tail in prop::collection::vec(any::<u8>(), 0..2048)) {
            let mut b = format::header().to_vec();
            b.extend_from_slice(&tail);
            read_bytes(&b);
            read_bytes(&tail);
        }

        #[test]
        fn a_valid_block_with_a_valid_crc_but_any_payload_never_panics(raw in prop::collection::vec(any::<u8>(), 0..4096), deflated in any::<bool>()) {
            // Past the CRC: the inflater and the frame decoder face the bytes.
            let payload = if deflated {
                use std::io::Write;
                let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(&raw).unwrap();
                z.finish().unwrap()
            } else {
                raw
            };
            let mut b = format::header().to_vec();
            b.extend_from_slice(&format::block(&payload));
            read_bytes(&b);
        }

        #[test]
        fn a_recorded_segment_with_bytes_changed_never_panics(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut b = valid_segment();
            for (at, v) in edits {
                let i = at.index(b.len());
                b[i] = v;
            }
            read_bytes(&b);
        }
    }

    /// Frame bytes that decode but break the delta rules (indices past the key table).
    #[test]
    fn a_frame_naming_a_key_it_never_defined_is_corrupt() {
        let mut rec = format::Encoder::default().encode(&snap(3), Wake::NONE);
        // Re-encode a frame whose `set` points past its table: build it through the bytes.
        let bytes = postcard::to_allocvec(&rec).unwrap();
        rec = postcard::from_bytes(&bytes).unwrap();
        let mut d = format::Decoder::default();
        assert!(d.apply(rec).is_ok());
        let mut e = format::Encoder::default();
        e.encode(&snap(0), Wake::NONE);
        let second = e.encode(&snap(1), Wake::NONE);
        // Applied to a fresh decoder, the delta names keys the decoder never saw.
        assert!(format::Decoder::default().apply(second).is_err());
    }
}

/// A segment written by the previous format (v2, `medic recording export` of a real agent before
/// processes carried `ppid` and `fd_limit`) still reads: its processes whole, the new fields
/// unknown (ppid 0, no limit), the tree fields derived from what it has.
#[test]
fn a_version_2_recording_still_reads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/recording-v2.mrec");
    let head = std::fs::read(&path).unwrap();
    assert_eq!(&head[8..12], &2u32.to_le_bytes(), "the fixture is a version 2 segment");
    let frames = read_all(&path);
    assert_eq!(frames.len(), 5);
    assert!(frames.windows(2).all(|w| w[0].snap.ts_ms + 500 < w[1].snap.ts_ms));
    for f in &frames {
        let s = &f.snap;
        assert!(s.metric("mem.total_bytes").is_some_and(|v| v > 0.0));
        assert!(s.processes.len() > 10, "{} processes", s.processes.len());
        let init = s.processes.iter().find(|p| p.pid == 1).expect("pid 1 recorded");
        assert!(!init.name.is_empty() && init.fds.is_some());
        assert!(s.processes.iter().all(|p| p.ppid == 0 && p.fd_limit.is_none() && p.children == 0 && p.fds_pct.is_none()));
        assert!(s.processes.iter().all(|p| p.rss_tree_bytes == p.rss_bytes));
        assert!(s.processes.iter().any(|p| p.cpu_pct.is_some()), "deltas applied after the key frame");
    }
    // A version this build does not know is refused by name.
    let dir = tempfile::tempdir().unwrap();
    let future = dir.path().join("rec-001700000000000.mrec");
    let mut b = head.clone();
    b[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&future, b).unwrap();
    let e = read(&future, None, None)
        .err()
        .map(|e| e.to_string())
        .or_else(|| read(&future, None, None).unwrap().find_map(|f| f.err()).map(|e| e.to_string()));
    assert!(e.is_some_and(|e| e.contains("format version 99, this medic reads 2 to 3")));
}
