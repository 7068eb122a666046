//! Opening the log: the lock, repair of a torn tail (set aside in `audit.torn.<ms>`), the
//! replay of the suffix covering `replay_secs` (verifying its chain, learning the tracker), and
//! settling what was found against the anchor and the forwarder's cursor (`audit_rewound`,
//! `audit_torn_tail`, `audit_chain_broken`, `audit_anchor_reset`), which also keeps the anchor
//! up to date after every write.

use super::anchor::{self, Anchor, AnchorFile};
use super::canonical::{now_ms, now_rfc3339, ts_ms};
use super::chain::{self, Chain};
use super::files::{io, open_private, secure_dir, sync_dir};
use super::record::{self, Record, Stored};
use super::tracker::Tracker;
use super::{segments, AuditConfig, AuditError, AuditLog, FILE_NAME, GENESIS};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What was found torn at open.
#[derive(Debug, Clone)]
pub struct TornTail {
    pub bytes: u64,
    pub saved_as: PathBuf,
    pub sha256: String,
}

/// Cuts a reason to a length that fits the anchor and a status line.
pub(super) fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

/// What the active segment holds after tail repair.
pub(super) struct Found {
    pub(super) seq: u64,
    pub(super) hash: String,
    pub(super) good_len: u64,
    pub(super) torn: Option<TornTail>,
}

impl AuditLog {
    /// Opens `<state_dir>` with the default `[audit]` settings and no replay (tests, tools).
    pub fn open(state_dir: &Path, node: &str) -> Result<(Self, Option<TornTail>), AuditError> {
        Self::open_with(state_dir, node, &AuditConfig::default(), &mut |_| {})
    }

    /// Opens (creating) the log in `state_dir` for appending, takes its lock, repairs a torn
    /// tail, replays the suffix of the log that covers `replay_secs` through `replay` (verifying
    /// its chain), and compares what it found with the anchor and the forwarder's cursor. What
    /// it finds wrong is recorded before this returns: `audit_rewound`, `audit_torn_tail`,
    /// `audit_chain_broken`, `audit_anchor_reset`.
    pub fn open_with(
        state_dir: &Path,
        node: &str,
        cfg: &AuditConfig,
        replay: &mut dyn FnMut(&Stored),
    ) -> Result<(Self, Option<TornTail>), AuditError> {
        secure_dir(state_dir, cfg)?;
        let lock_path = state_dir.join("audit.lock");
        let lock = match open_private(&lock_path, cfg, false) {
            // A lock file someone else made (in a dir they could write once): replace it.
            Err(AuditError::Unsafe { .. }) => {
                std::fs::remove_file(&lock_path).map_err(io(&lock_path))?;
                open_private(&lock_path, cfg, false)?
            }
            other => other?,
        };
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| AuditError::Locked { path: state_dir.join(FILE_NAME) })?;
        let path = state_dir.join(FILE_NAME);
        let created = !path.exists();
        let file = open_private(&path, cfg, true)?;
        let stored = anchor::read(state_dir);
        let anchor_file = AnchorFile::open(state_dir, cfg.file_mode()).map_err(io(state_dir))?;
        let _ = open_private(anchor_file.path(), cfg, false)?;
        let mut log = Self {
            dir: state_dir.to_path_buf(),
            path,
            file,
            _lock: lock,
            anchor_file,
            anchor: stored.clone().unwrap_or_else(|_| Anchor::fresh()),
            cfg: cfg.clone(),
            node: node.to_string(),
            seq: 0,
            last_hash: GENESIS.into(),
            good_len: 0,
            seg_first: 0,
            seg_started_ms: now_ms(),
            since_checkpoint: 0,
            last_checkpoint_ms: now_ms(),
            last_checkpoint_seq: 0,
            last_prune_ms: 0,
            tracker: Tracker::default(),
            anchor_error: None,
            fsync_seconds: None,
            batching: false,
            staged_bytes: Vec::new(),
            saved: None,
        };
        let found = log.repair()?;
        let broken = log.replay_suffix(found.good_len, replay)?;
        let anchor_problem = match stored {
            Ok(_) => None,
            Err(anchor::Read::Missing) if found.seq == 0 && found.torn.is_none() => None,
            Err(anchor::Read::Missing) => Some("no anchor (the first start of a version with anchors, or it was deleted)".to_string()),
            Err(anchor::Read::Invalid(e)) => Some(format!("anchor unreadable: {e}")),
        };
        let torn = log.settle(found, None, anchor_problem, broken, None)?;
        if created {
            sync_dir(state_dir)?;
        }
        Ok((log, torn))
    }

    /// Tail repair of the active segment: keeps everything up to the last whole record that
    /// chains and sets the rest aside (`audit.torn.<ms>`), whatever its size or content.
    pub(super) fn repair(&mut self) -> Result<Found, AuditError> {
        let path = self.path.clone();
        let len = self.file.metadata().map_err(io(&path))?.len();
        let mut r = self.file.try_clone().map_err(io(&path))?;
        let good = segments::last_good(&mut r, len).map_err(io(&path))?;
        let (mut seq, mut hash, good_len) = match &good {
            Some((v, gl)) => (v.seq, v.hash.clone(), *gl),
            None => (0, GENESIS.to_string(), 0),
        };
        if good.is_none() {
            // Nothing whole in the active segment: the chain head is the last closed segment's
            // last record, else the point removed segments ended at.
            let closed = segments::list(&self.dir).map_err(io(&self.dir))?;
            match closed.iter().rev().find(|s| s.first.is_some()) {
                Some(s) => {
                    let mut f = File::open(&s.path).map_err(io(&s.path))?;
                    let l = f.metadata().map_err(io(&s.path))?.len();
                    if let Some((v, _)) = segments::last_good(&mut f, l).map_err(io(&s.path))? {
                        (seq, hash) = (v.seq, v.hash);
                    }
                }
                None => (seq, hash) = (self.anchor.base_seq, self.anchor.base_hash.clone()),
            }
        }
        let mut torn = None;
        if len > good_len {
            let ts = now_ms();
            let saved_as = self.dir.join(format!("audit.torn.{ts}"));
            let mut out = open_private(&saved_as, &self.cfg, false)?;
            let mut src = self.file.try_clone().map_err(io(&path))?;
            src.seek(SeekFrom::Start(good_len)).map_err(io(&path))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = src.read(&mut buf).map_err(io(&path))?;
                if k == 0 {
                    break;
                }
                hasher.update(&buf[..k]);
                out.write_all(&buf[..k]).map_err(io(&saved_as))?;
                n += k as u64;
            }
            out.sync_all().map_err(io(&saved_as))?;
            self.file.set_len(good_len).and_then(|_| self.file.sync_all()).map_err(io(&path))?;
            torn = Some(TornTail { bytes: n, saved_as, sha256: hex::encode(hasher.finalize()) });
        }
        self.seq = seq;
        self.last_hash = hash.clone();
        self.good_len = good_len;
        match segments::first_record(&self.path).map_err(io(&path))? {
            Some(v) if good_len > 0 => {
                self.seg_first = v.seq;
                self.seg_started_ms = ts_ms(&v.rec).unwrap_or_else(now_ms);
            }
            _ => {
                self.seg_first = 0;
                self.seg_started_ms = now_ms();
            }
        }
        Ok(Found { seq, hash, good_len, torn })
    }

    /// Replays the segments covering `replay_secs` (the active one up to `good_len`) through
    /// `replay`, verifying their chain, and learns open breakers and unfinished actions (from
    /// the checkpoint that starts the first of them, then from the records). Returns the first
    /// break found, if any. Memory: one line at a time.
    fn replay_suffix(&mut self, good_len: u64, replay: &mut dyn FnMut(&Stored)) -> Result<Option<record::ChainBroken>, AuditError> {
        let segs = segments::list(&self.dir).map_err(io(&self.dir))?;
        let window_start = now_ms().saturating_sub(self.cfg.replay_secs.min(i64::MAX as u64 / 1000) as i64 * 1000);
        let mut start = 0;
        for (i, s) in segs.iter().enumerate().rev() {
            let first = segments::first_record(&s.path).map_err(io(&s.path))?;
            if first.is_some_and(|v| ts_ms(&v.rec).is_some_and(|t| t <= window_start)) {
                start = i;
                break;
            }
        }
        let mut lines = segments::Lines::new(segs[start..].to_vec(), Some(good_len));
        let mut chain = Chain::loose();
        let mut broken: Option<record::ChainBroken> = None;
        while let Some((item, path, line_no)) = lines.next_line().map_err(io(&self.dir))? {
            let path = path.display().to_string();
            let res = match item {
                segments::Item::Whole(text) => match chain.push(text) {
                    Ok(v) => Ok(v),
                    Err(reason) => Err((reason, chain::valid(text).ok())),
                },
                segments::Item::TooLong => Err((format!("a line longer than {} bytes", segments::MAX_LINE), None)),
                segments::Item::Torn => Err(("a torn line inside the log".to_string(), None)),
            };
            let v = match res {
                Ok(v) => v,
                Err((reason, v)) => {
                    if broken.is_none() {
                        broken = Some(record::ChainBroken { after_seq: chain.seq, segment: path, line: line_no, reason: short(&reason) });
                    }
                    let Some(v) = v else { continue };
                    chain.accept(&v);
                    v
                }
            };
            let stored = Stored::read(&v.rec);
            match &stored.record {
                Ok(Record::AuditCheckpoint { checkpoint }) if chain.records == 1 => self.tracker.seed(checkpoint),
                Ok(r) => self.tracker.observe(stored.seq, &stored.ts, r),
                // Skipped for the ledgers, as a record without the fields they need always was.
                Err(e) => tracing::debug!(message = "Audit record not read through its kind.", seq = stored.seq, error = %e),
            }
            replay(&stored);
        }
        Ok(broken)
    }

    /// Compares what the log holds (after repair) with the anchor and the forwarder's cursor,
    /// and records what is wrong: a rewind first (it continues `seq` after the highest ever
    /// issued), then a torn tail, a chain break, an anchor that had to be made anew.
    pub(super) fn settle(
        &mut self,
        found: Found,
        rescued: Option<PathBuf>,
        anchor_problem: Option<String>,
        broken: Option<record::ChainBroken>,
        detected: Option<String>,
    ) -> Result<Option<TornTail>, AuditError> {
        let cursor = crate::forward::read_cursor(&self.dir);
        let a = self.anchor.clone();
        let high = a.max_seq.max(cursor).max(found.seq);
        let why = if found.seq < a.seq {
            Some(format!(
                "the log ends at seq {} but its anchor says {}: records were cut off, or the file deleted or replaced",
                found.seq, a.seq
            ))
        } else if found.seq == a.seq && found.hash != a.hash {
            Some(format!("seq {} has another hash than the anchor's: the log was replaced", found.seq))
        } else if found.seq < cursor {
            Some(format!("the broker acknowledged seq {cursor} but the log ends at seq {}", found.seq))
        } else {
            None
        };
        self.refresh_identity();
        if let Some(why) = why {
            let why = match &detected {
                Some(d) => format!("{d}; {why}"),
                None => why,
            };
            tracing::error!(message = "AUDIT LOG REWOUND: records are missing; seq continues after the highest issued.", message_id = crate::telemetry::ids::AUDIT_REWOUND, error_code = "audit_rewound", found_seq = found.seq, anchor_seq = a.seq, forward_cursor = cursor, reason = %why);
            self.seq = high;
            let rewound = record::Rewound {
                expected: record::Expected { seq: a.seq, hash: a.hash.clone(), max_seq: a.max_seq },
                found: record::Head { seq: found.seq, hash: found.hash.clone() },
                lost: record::Lost { from_seq: found.seq + 1, to_seq: high },
                forward_cursor: cursor,
                reason: why.clone(),
                rescued: rescued.as_ref().map(|p| p.display().to_string()),
            };
            let seq = self.write_record(&Record::AuditRewound { rewound }, now_ms())?;
            self.anchor.rewound = Some(serde_json::json!({
                "seq": seq, "ts": now_rfc3339(now_ms()), "lost_from_seq": found.seq + 1, "lost_to_seq": high, "reason": short(&why),
            }));
        }
        if let Some(t) = &found.torn {
            let torn =
                record::Torn { bytes: t.bytes, saved_as: t.saved_as.display().to_string(), sha256: t.sha256.clone(), after_seq: found.seq };
            self.write_record(&Record::AuditTornTail { torn }, now_ms())?;
        }
        if let Some(b) = broken {
            tracing::error!(message = "AUDIT CHAIN BROKEN in the replayed part of the log.", message_id = crate::telemetry::ids::AUDIT_CHAIN_BROKEN, error_code = "audit_chain_broken", after_seq = b.after_seq, segment = %b.segment, line = b.line, reason = %b.reason);
            let (after_seq, reason) = (b.after_seq, b.reason.clone());
            let seq = self.write_record(&Record::AuditChainBroken { broken: b }, now_ms())?;
            self.anchor.chain_broken = Some(serde_json::json!({
                "seq": seq, "ts": now_rfc3339(now_ms()), "after_seq": after_seq, "reason": reason,
            }));
        }
        if let Some(p) = anchor_problem {
            tracing::warn!(message = "Audit anchor made anew.", error_code = "audit_anchor_reset", reason = %p);
            let rec = Record::AuditAnchorReset { reason: p, found: record::Head { seq: found.seq, hash: found.hash.clone() } };
            self.write_record(&rec, now_ms())?;
        }
        self.save_anchor();
        Ok(found.torn)
    }

    pub(super) fn refresh_identity(&mut self) {
        if let Ok(st) = rustix::fs::fstat(&self.file) {
            self.anchor.dev = st.st_dev;
            self.anchor.ino = st.st_ino;
        }
    }

    /// Brings the anchor up to the last record and fsyncs it. A failure is kept for status:
    /// the anchor then lags, which the next start accepts (a log ahead of its anchor).
    pub(super) fn save_anchor(&mut self) {
        self.anchor.seq = self.seq;
        self.anchor.hash = self.last_hash.clone();
        self.anchor.max_seq = self.anchor.max_seq.max(self.seq);
        self.anchor.len = self.good_len;
        match self.anchor_file.write(&self.anchor) {
            Ok(()) => self.anchor_error = None,
            Err(e) => {
                if self.anchor_error.is_none() {
                    tracing::error!(message = "Audit anchor not writable.", error_code = "audit_anchor_io", error = %e);
                }
                self.anchor_error = Some(e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::verify;
    use super::*;
    use proptest::prelude::*;
    use std::fs::OpenOptions;

    fn note(text: &str) -> Record {
        Record::AuditRecovered(record::AuditRecovered { since: text.into(), error: String::new(), running_actions: 0 })
    }

    /// Garbage a crash (or a disk) can leave after the last whole record.
    fn garbage() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            // zero-filled blocks
            (1usize..9000).prop_map(|n| vec![0u8; n]),
            // newlines
            (1usize..4).prop_map(|n| vec![b'\n'; n]),
            // a prefix of a record
            (1usize..300).prop_map(|n| br#"{"hash":"00","kind":"note","node":"n","prev_hash":"00","schema":"medic.audit/v1","seq":4}"#
                .iter()
                .cycle()
                .take(n)
                .copied()
                .collect()),
            // anything
            proptest::collection::vec(any::<u8>(), 1..600),
        ];
        proptest::collection::vec(piece, 1..5).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(48), ..ProptestConfig::default() })]

        /// Any garbage appended to a valid log: it opens, keeps every whole record, sets the
        /// rest aside (recorded), and the chain goes on.
        #[test]
        fn tail_repair_keeps_every_whole_record_whatever_the_garbage(junk in garbage(), n in 1u64..5) {
            let dir = tempfile::tempdir().unwrap();
            {
                let (mut log, _) = AuditLog::open(dir.path(), "n").unwrap();
                for i in 0..n {
                    log.append(&note(&i.to_string())).unwrap();
                }
            }
            let path = dir.path().join(FILE_NAME);
            let whole = std::fs::read(&path).unwrap();
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(&junk).unwrap();
            drop(f);
            let (mut log, torn) = AuditLog::open(dir.path(), "n").expect("opens whatever the tail");
            let torn = torn.expect("the garbage is set aside");
            prop_assert_eq!(torn.bytes, junk.len() as u64);
            prop_assert_eq!(std::fs::read(&torn.saved_as).unwrap(), junk);
            log.append(&note("after")).unwrap();
            drop(log);
            let now = std::fs::read(&path).unwrap();
            prop_assert!(now.starts_with(&whole), "every whole record kept");
            let v = verify::verify(&path).unwrap();
            prop_assert!(v.is_ok(), "{:?}", v);
            prop_assert_eq!(v.unwrap().last_seq, n + 2);
        }
    }
}
