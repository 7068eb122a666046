//! Time windows for the gate's `maintenance` rule: the operator's `[[maintenance]]` windows
//! (a weekly recurring window or a one-off RFC 3339 range, scoped to playbooks and action kinds)
//! and a playbook's own active hours (`META.active`), both built on [`Weekly`]. It owns the
//! window math: whether an instant is inside, when the window ends (contiguous occurrences
//! merged, so a daily `00:00`–`24:00` window does not "end" at every midnight) and when it next
//! starts. Civil time is read in a zone (`UTC`, the default; a fixed offset `+02:00`; `local`,
//! the node's /etc/localtime; or an IANA name such as `Europe/Berlin`, from the system's tz
//! database) with its DST rules (`jiff`): a wall-clock time skipped by a DST change starts the
//! window at the first instant after the gap. Instants are the caller's (the sample's time), so
//! the daemon, `playbook test` and `replay` agree.

use crate::actions::ActionKind;
use jiff::civil::Date;
use jiff::tz::{Offset, TimeZone};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// At most this many `[[maintenance]]` windows.
pub const MAX_WINDOWS: usize = 64;
/// At most this many entries in a window's `playbooks` or in `META.active`.
pub const MAX_ENTRIES: usize = 32;
/// A one-off window lasts at most a year.
pub const MAX_ONCE_MS: i64 = 366 * 86_400_000;
/// Longest window name (bytes).
pub const MAX_NAME: usize = 64;

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A window's error: the field at fault (`days`, `from`, ...) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WindowError {
    pub field: &'static str,
    pub reason: String,
}

fn err(field: &'static str, reason: impl Into<String>) -> WindowError {
    WindowError { field, reason: reason.into() }
}

/// A weekly recurring window: on each of `days` (the day it starts), from `from` to `to` local
/// time in `zone`; `to` at or before `from` ends the next day (crossing midnight).
#[derive(Debug, Clone, PartialEq)]
pub struct Weekly {
    /// Monday first.
    days: [bool; 7],
    from_min: u32,
    to_min: u32,
    zone: TimeZone,
    /// The zone as written (`UTC` when not given).
    zone_name: String,
}

/// A zone as written: `UTC`/`Z`, `+HH:MM`/`-HH:MM`, `local` (/etc/localtime) or an IANA name.
pub fn zone(name: &str) -> Result<TimeZone, WindowError> {
    match name {
        "UTC" | "utc" | "Z" => return Ok(TimeZone::UTC),
        "local" => return TimeZone::try_system().map_err(|e| err("zone", format!("the node's local zone cannot be read: {e}"))),
        _ => {}
    }
    if let Some(rest) = name.strip_prefix(['+', '-']) {
        let sign = if name.starts_with('-') { -1 } else { 1 };
        let (h, m) = rest.split_once(':').ok_or_else(|| err("zone", format!("{name:?}: a fixed offset is +HH:MM or -HH:MM")))?;
        let (h, m): (i32, i32) = match (h.parse::<i32>(), m.parse::<i32>()) {
            (Ok(hh), Ok(mm)) if is_2_digits(h) && is_2_digits(m) && hh <= 14 && mm < 60 => (hh, mm),
            _ => return Err(err("zone", format!("{name:?}: a fixed offset is +HH:MM or -HH:MM, at most 14 hours"))),
        };
        let off = Offset::from_seconds(sign * (h * 3600 + m * 60)).map_err(|e| err("zone", format!("{name:?}: {e}")))?;
        return Ok(TimeZone::fixed(off));
    }
    if name.is_empty() || name.len() > 64 || name.contains("..") || name.starts_with('/') {
        return Err(err("zone", format!("{name:?} is not a time zone name")));
    }
    TimeZone::get(name).map_err(|_| {
        err("zone", format!("{name:?}: no such time zone in the system's tz database (UTC, +HH:MM, local, or a name like Europe/Berlin)"))
    })
}

fn is_2_digits(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())
}

fn time_of_day(field: &'static str, s: &str, allow_24: bool) -> Result<u32, WindowError> {
    let bad = || err(field, format!("{s:?} must be HH:MM (00:00 to {})", if allow_24 { "24:00" } else { "23:59" }));
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if !is_2_digits(h) || !is_2_digits(m) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let min = h * 60 + m;
    if m >= 60 || min > 1440 || (min == 1440 && !allow_24) {
        return Err(bad());
    }
    Ok(min)
}

fn day_index(s: &str) -> Option<usize> {
    let s = s.to_ascii_lowercase();
    DAY_NAMES.iter().position(|d| s == *d || (s.len() > 3 && s.starts_with(d) && is_full_day(&s)))
}

fn is_full_day(s: &str) -> bool {
    ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"].contains(&s)
}

/// `["mon", "wed-fri", "sunday"]`; empty: every day. A range may wrap (`fri-mon`).
fn days(list: &[String]) -> Result<[bool; 7], WindowError> {
    if list.is_empty() {
        return Ok([true; 7]);
    }
    if list.len() > 7 {
        return Err(err("days", "at most 7 entries"));
    }
    let mut out = [false; 7];
    for d in list {
        let bad = || err("days", format!("{d:?}: a day is mon, tue, wed, thu, fri, sat, sun (or a range such as mon-fri)"));
        match d.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day_index(a).ok_or_else(bad)?, day_index(b).ok_or_else(bad)?);
                let mut i = a;
                loop {
                    out[i] = true;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => out[day_index(d).ok_or_else(bad)?] = true,
        }
    }
    Ok(out)
}

impl Weekly {
    /// Parses the written form; `zone` `None` is UTC.
    pub fn parse(day_list: &[String], from: &str, to: &str, zone_name: Option<&str>) -> Result<Self, WindowError> {
        let days = days(day_list)?;
        let from_min = time_of_day("from", from, false)?;
        let to_min = time_of_day("to", to, true)?;
        if from_min == to_min {
            return Err(err("to", format!("{to:?} equals from: an empty window (a whole day is from = \"00:00\", to = \"24:00\")")));
        }
        let zone_name = zone_name.unwrap_or("UTC").to_string();
        Ok(Self { days, from_min, to_min, zone: zone(&zone_name)?, zone_name })
    }

    /// Occurrences (start, end in ms) starting from the day before `now`'s local date to 8 days
    /// after it, in order.
    fn occurrences(&self, now: i64) -> Vec<(i64, i64)> {
        let Ok(ts) = Timestamp::from_millisecond(now) else { return Vec::new() };
        let today = ts.to_zoned(self.zone.clone()).date();
        let mut out = Vec::new();
        for d in -1i64..=8 {
            let Ok(date) = today.checked_add(jiff::Span::new().days(d)) else { continue };
            if !self.days[date.weekday().to_monday_zero_offset() as usize] {
                continue;
            }
            let end_date_offset = if self.to_min <= self.from_min { 1 } else { 0 };
            let (Some(s), Some(e)) = (self.instant(date, 0, self.from_min), self.instant(date, end_date_offset, self.to_min)) else {
                continue;
            };
            if e > s {
                out.push((s, e));
            }
        }
        out
    }

    /// `date` + `plus_days` at `min` minutes (1440: the next midnight) in the zone, as ms.
    fn instant(&self, date: Date, plus_days: i64, min: u32) -> Option<i64> {
        let date = date.checked_add(jiff::Span::new().days(plus_days + i64::from(min / 1440))).ok()?;
        let min = min % 1440;
        let dt = date.at((min / 60) as i8, (min % 60) as i8, 0, 0);
        // Compatible disambiguation: a time in a DST gap moves past it, a repeated one is the first.
        dt.to_zoned(self.zone.clone()).ok().map(|z| z.timestamp().as_millisecond())
    }

    /// The span around `now`: `Some(end)` when inside (contiguous occurrences merged), and the
    /// next start after `now` (after the merged end when inside).
    pub fn around(&self, now: i64) -> (Option<i64>, Option<i64>) {
        let occ = self.occurrences(now);
        let mut inside: Option<i64> = None;
        for (s, e) in &occ {
            match inside {
                None if *s <= now && now < *e => inside = Some(*e),
                Some(end) if *s <= end => inside = Some(end.max(*e)),
                _ => {}
            }
        }
        let after = inside.unwrap_or(now);
        let next = occ.iter().map(|(s, _)| *s).find(|s| *s > after);
        (inside, next)
    }

    /// The written form, for status and details: `mon,tue 22:00-06:00 UTC`.
    pub fn describe(&self) -> String {
        let days: Vec<&str> = DAY_NAMES.iter().zip(self.days).filter(|(_, on)| *on).map(|(d, _)| *d).collect();
        let days = if days.len() == 7 { "daily".to_string() } else { days.join(",") };
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        format!("{days} {}-{} {}", hm(self.from_min), hm(self.to_min), self.zone_name)
    }
}

impl Serialize for Weekly {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.describe())
    }
}

/// One `[[maintenance]]` entry as written (docs/CONFIG.md). Weekly: `days`, `from`, `to`,
/// `zone`; one-off: `start`, `end` (RFC 3339 with an offset). Scope: `playbooks` (name
/// patterns; default all) and `actions` (kinds; default every kind but `notify`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub name: String,
    #[serde(default)]
    pub days: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub zone: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    #[serde(default)]
    pub playbooks: Vec<String>,
    pub actions: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
enum When {
    Weekly(Weekly),
    Once { start_ms: i64, end_ms: i64 },
}

/// A resolved maintenance window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub name: String,
    when: When,
    playbooks: Vec<String>,
    kinds: Vec<ActionKind>,
}

/// Where a window stands at an instant, for `medic status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowStatus {
    pub name: String,
    /// `daily 22:00-06:00 UTC`, or the one-off range.
    pub when: String,
    pub active: bool,
    /// End of the current window (RFC 3339), when active.
    pub until: Option<String>,
    /// Start of the next one, if any.
    pub next_start: Option<String>,
    pub playbooks: Vec<String>,
    pub actions: Vec<ActionKind>,
}

fn rfc3339(field: &'static str, s: &str) -> Result<i64, WindowError> {
    let ts: Timestamp = s.parse().map_err(|e| err(field, format!("{s:?} is not an RFC 3339 time with an offset: {e}")))?;
    Ok(ts.as_millisecond())
}

impl Window {
    /// Resolves one entry; the error names the field at fault.
    pub fn resolve(c: &WindowConfig) -> Result<Self, WindowError> {
        if c.name.is_empty() || c.name.len() > MAX_NAME || !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) {
            return Err(err("name", format!("{:?} must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.'", c.name)));
        }
        let weekly = !c.days.is_empty() || c.from.is_some() || c.to.is_some() || c.zone.is_some();
        let once = c.start.is_some() || c.end.is_some();
        let when = match (weekly, once) {
            (true, true) => return Err(err("start", "a window is weekly (days, from, to, zone) or one-off (start, end), not both")),
            (false, false) => return Err(err("from", "a window needs from and to (weekly) or start and end (one-off)")),
            (true, false) => {
                let from = c.from.as_deref().ok_or_else(|| err("from", "a weekly window needs from and to"))?;
                let to = c.to.as_deref().ok_or_else(|| err("to", "a weekly window needs from and to"))?;
                When::Weekly(Weekly::parse(&c.days, from, to, c.zone.as_deref())?)
            }
            (false, true) => {
                let start_ms = rfc3339("start", c.start.as_deref().ok_or_else(|| err("start", "a one-off window needs start and end"))?)?;
                let end_ms = rfc3339("end", c.end.as_deref().ok_or_else(|| err("end", "a one-off window needs start and end"))?)?;
                if end_ms <= start_ms || end_ms - start_ms > MAX_ONCE_MS {
                    return Err(err("end", "must be after start, and at most 366 days after it"));
                }
                When::Once { start_ms, end_ms }
            }
        };
        if c.playbooks.len() > MAX_ENTRIES || c.playbooks.iter().any(|p| p.is_empty() || p.len() > 256) {
            return Err(err("playbooks", format!("at most {MAX_ENTRIES} non-empty name patterns")));
        }
        let kinds = match &c.actions {
            None => ActionKind::ALL.iter().copied().filter(|k| *k != ActionKind::Notify).collect(),
            Some(list) => {
                let mut v = Vec::new();
                for a in list {
                    let k = ActionKind::parse(a).ok_or_else(|| {
                        let kinds: Vec<&str> = ActionKind::ALL.iter().map(|k| k.as_str()).collect();
                        err("actions", format!("unknown action {a:?} ({})", kinds.join(", ")))
                    })?;
                    if !v.contains(&k) {
                        v.push(k);
                    }
                }
                v
            }
        };
        Ok(Self { name: c.name.clone(), when, playbooks: c.playbooks.clone(), kinds })
    }

    /// Whether the window covers requests of `kind` from `playbook`.
    pub fn applies(&self, playbook: &str, kind: ActionKind) -> bool {
        self.kinds.contains(&kind)
            && (self.playbooks.is_empty() || self.playbooks.iter().any(|p| crate::actions::glob::glob_match(p, playbook)))
    }

    /// `Some(end)` when `now` is inside, and the next start after it (after the end if inside).
    pub fn around(&self, now: i64) -> (Option<i64>, Option<i64>) {
        match &self.when {
            When::Weekly(w) => w.around(now),
            When::Once { start_ms, end_ms } => {
                let inside = (*start_ms <= now && now < *end_ms).then_some(*end_ms);
                (inside, (now < *start_ms).then_some(*start_ms))
            }
        }
    }

    fn describe(&self) -> String {
        match &self.when {
            When::Weekly(w) => w.describe(),
            When::Once { start_ms, end_ms } => {
                format!("{} to {}", crate::audit::now_rfc3339(*start_ms), crate::audit::now_rfc3339(*end_ms))
            }
        }
    }

    pub fn status(&self, now: i64) -> WindowStatus {
        let (inside, next) = self.around(now);
        WindowStatus {
            name: self.name.clone(),
            when: self.describe(),
            active: inside.is_some(),
            until: inside.map(crate::audit::now_rfc3339),
            next_start: next.map(crate::audit::now_rfc3339),
            playbooks: self.playbooks.clone(),
            actions: self.kinds.clone(),
        }
    }
}

/// The node's windows, in config order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Windows(Vec<Window>);

/// Why the `maintenance` rule holds a request: which window (or the playbook's active hours),
/// until when.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub detail: String,
    pub until_ms: Option<i64>,
}

impl Windows {
    /// Resolves every entry; the error carries the entry's index.
    pub fn resolve(list: &[WindowConfig]) -> Result<Self, (usize, WindowError)> {
        if list.len() > MAX_WINDOWS {
            return Err((MAX_WINDOWS, err("name", format!("at most {MAX_WINDOWS} windows"))));
        }
        let mut out: Vec<Window> = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let w = Window::resolve(c).map_err(|e| (i, e))?;
            if out.iter().any(|o| o.name == w.name) {
                return Err((i, err("name", format!("{:?} is used by an earlier window", w.name))));
            }
            out.push(w);
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The windows that hold `kind` from `playbook` at `now`; the one that ends last speaks.
    pub fn hold(&self, playbook: &str, kind: ActionKind, now: i64) -> Option<Hold> {
        self.0
            .iter()
            .filter(|w| w.applies(playbook, kind))
            .filter_map(|w| w.around(now).0.map(|end| (w, end)))
            .max_by_key(|(_, end)| *end)
            .map(|(w, end)| Hold {
                detail: format!("maintenance window {:?} ({}) until {}", w.name, w.describe(), crate::audit::now_rfc3339(end)),
                until_ms: Some(end),
            })
    }

    pub fn status(&self, now: i64) -> Vec<WindowStatus> {
        self.0.iter().map(|w| w.status(now)).collect()
    }
}

/// A playbook's active hours (`META.active`): outside all of them, its requests are held.
pub fn outside_active(active: &[Weekly], now: i64) -> Option<Hold> {
    if active.is_empty() || active.iter().any(|w| w.around(now).0.is_some()) {
        return None;
    }
    let next = active.iter().filter_map(|w| w.around(now).1).min();
    let hours: Vec<String> = active.iter().map(Weekly::describe).collect();
    Some(Hold {
        detail: format!(
            "outside the playbook's active hours ({}){}",
            hours.join("; "),
            next.map_or(String::new(), |t| format!(", active again at {}", crate::audit::now_rfc3339(t)))
        ),
        until_ms: next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().expect("a time").as_millisecond()
    }

    fn weekly(days: &[&str], from: &str, to: &str, zone: Option<&str>) -> Weekly {
        let days: Vec<String> = days.iter().map(|s| s.to_string()).collect();
        Weekly::parse(&days, from, to, zone).expect("parses")
    }

    #[test]
    fn a_weekly_window_across_midnight_belongs_to_the_day_it_starts() {
        // Friday 22:00 to Saturday 06:00 UTC. 2026-11-27 is a Friday.
        let w = weekly(&["fri"], "22:00", "06:00", None);
        assert_eq!(w.around(ms("2026-11-27T21:59:59Z")), (None, Some(ms("2026-11-27T22:00:00Z"))));
        assert_eq!(w.around(ms("2026-11-27T22:00:00Z")).0, Some(ms("2026-11-28T06:00:00Z")));
        assert_eq!(w.around(ms("2026-11-28T05:59:00Z")).0, Some(ms("2026-11-28T06:00:00Z")));
        // After it ends, the next one is a week later.
        assert_eq!(w.around(ms("2026-11-28T06:00:00Z")), (None, Some(ms("2026-12-04T22:00:00Z"))));
        // Thursday night is not Friday's window.
        assert_eq!(w.around(ms("2026-11-27T03:00:00Z")).0, None);
    }

    #[test]
    fn the_week_wraps_from_sunday_to_monday() {
        let w = weekly(&["sun"], "23:00", "01:00", None);
        // 2026-11-29 is a Sunday; the window runs into Monday.
        assert_eq!(w.around(ms("2026-11-30T00:30:00Z")).0, Some(ms("2026-11-30T01:00:00Z")));
        let r = weekly(&["sat-mon"], "00:00", "24:00", None);
        // Contiguous days merge: inside on Saturday, it ends Tuesday 00:00.
        assert_eq!(r.around(ms("2026-11-28T12:00:00Z")), (Some(ms("2026-12-01T00:00:00Z")), Some(ms("2026-12-05T00:00:00Z"))));
        assert_eq!(r.around(ms("2026-12-01T00:00:00Z")).0, None);
    }

    #[test]
    fn a_fixed_offset_shifts_the_window() {
        let w = weekly(&[], "08:00", "18:00", Some("+02:00"));
        assert_eq!(w.around(ms("2026-11-28T06:00:00Z")).0, Some(ms("2026-11-28T16:00:00Z")));
        assert_eq!(w.around(ms("2026-11-28T05:59:00Z")), (None, Some(ms("2026-11-28T06:00:00Z"))));
    }

    #[test]
    fn a_named_zone_follows_dst() {
        assert!(
            std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin").exists(),
            "the tz database is missing: .ci/setup installs it (`[ -e /usr/share/zoneinfo/Europe/Berlin ] || need+=(tzdata)`)"
        );
        // Europe/Berlin: 2026-03-29 02:00 CET jumps to 03:00 CEST; 2026-10-25 03:00 CEST back to 02:00.
        let w = weekly(&["sun"], "01:00", "04:00", Some("Europe/Berlin"));
        // Spring: 01:00 CET = 00:00Z, 04:00 CEST = 02:00Z: two real hours.
        assert_eq!(w.around(ms("2026-03-29T00:30:00Z")).0, Some(ms("2026-03-29T02:00:00Z")));
        // Autumn: 01:00 CEST = 23:00Z (Sat), 04:00 CET = 03:00Z: four real hours.
        assert_eq!(w.around(ms("2026-10-24T23:30:00Z")).0, Some(ms("2026-10-25T03:00:00Z")));
        // A start inside the gap (02:30 does not exist that day) starts after it, 03:30 CEST.
        let g = weekly(&["sun"], "02:30", "05:00", Some("Europe/Berlin"));
        assert_eq!(g.around(ms("2026-03-29T00:00:00Z")).1, Some(ms("2026-03-29T01:30:00Z")));
    }

    #[test]
    fn a_one_off_window_and_its_scope() {
        let c = WindowConfig {
            name: "dc-move".into(),
            start: Some("2026-12-24T00:00:00+01:00".into()),
            end: Some("2026-12-27T00:00:00+01:00".into()),
            playbooks: vec!["disk-*".into()],
            ..Default::default()
        };
        let ws = Windows::resolve(&[c]).expect("resolves");
        let inside = ms("2026-12-25T12:00:00Z");
        let h = ws.hold("disk-full", ActionKind::CleanFiles, inside).expect("held");
        assert_eq!(h.until_ms, Some(ms("2026-12-26T23:00:00Z")));
        assert!(h.detail.contains("\"dc-move\"") && h.detail.contains("2026-12-26T23:00:00"), "{}", h.detail);
        // notify is exempt by default; another playbook is out of scope; after the end nothing.
        assert_eq!(ws.hold("disk-full", ActionKind::Notify, inside), None);
        assert_eq!(ws.hold("oom", ActionKind::CleanFiles, inside), None);
        assert_eq!(ws.hold("disk-full", ActionKind::CleanFiles, ms("2026-12-26T23:00:00Z")), None);
        let st = &ws.status(ms("2026-12-01T00:00:00Z"))[0];
        assert!(!st.active && st.next_start.as_deref().is_some_and(|s| s.starts_with("2026-12-23T23:00:00")), "{st:?}");
    }

    #[test]
    fn errors_name_the_field() {
        let bad = |c: WindowConfig| Window::resolve(&c).unwrap_err().field;
        let base = WindowConfig { name: "w".into(), from: Some("22:00".into()), to: Some("06:00".into()), ..Default::default() };
        assert!(Window::resolve(&base).is_ok());
        assert_eq!(bad(WindowConfig { from: Some("25:00".into()), ..base.clone() }), "from");
        assert_eq!(bad(WindowConfig { to: Some("22:00".into()), ..base.clone() }), "to");
        assert_eq!(bad(WindowConfig { days: vec!["funday".into()], ..base.clone() }), "days");
        assert_eq!(bad(WindowConfig { zone: Some("Mars/Olympus".into()), ..base.clone() }), "zone");
        assert_eq!(bad(WindowConfig { zone: Some("../../etc/passwd".into()), ..base.clone() }), "zone");
        assert_eq!(bad(WindowConfig { actions: Some(vec!["reboot".into()]), ..base.clone() }), "actions");
        assert_eq!(bad(WindowConfig { name: "".into(), ..base.clone() }), "name");
        assert_eq!(bad(WindowConfig { start: Some("2026-01-01T00:00:00Z".into()), ..base.clone() }), "start");
        let once = WindowConfig {
            name: "o".into(),
            start: Some("2026-01-02T00:00:00Z".into()),
            end: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(bad(once.clone()), "end");
        assert_eq!(bad(WindowConfig { start: Some("2026-01-01 00:00".into()), ..once }), "start");
    }

    #[test]
    fn active_hours_say_when_they_start_again() {
        let a = vec![weekly(&["mon-fri"], "08:00", "18:00", None)];
        // Saturday noon: held until Monday 08:00.
        let h = outside_active(&a, ms("2026-11-28T12:00:00Z")).expect("outside");
        assert_eq!(h.until_ms, Some(ms("2026-11-30T08:00:00Z")));
        assert!(h.detail.contains("mon,tue,wed,thu,fri 08:00-18:00 UTC"), "{}", h.detail);
        assert_eq!(outside_active(&a, ms("2026-11-30T08:00:00Z")), None);
        assert_eq!(outside_active(&[], 0), None);
    }
}
