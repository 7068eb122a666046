//! medic: a host-level auto-remediation agent. Modules follow the data flow:
//! `signals` (sense) → `playbooks` (decide) → `gate` → `actions` (act) → `audit` (record), `recorder` (the signals' flight recorder),
//! with `config`, `cli`, `daemon` (the loop), `telemetry` (logs) and `metrics` (`/metrics`) around them.

pub mod actions;
pub mod alerts;
pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decide;
pub mod forward;
pub mod gate;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod playbooks;
pub mod recorder;
pub mod signals;
pub mod telemetry;
