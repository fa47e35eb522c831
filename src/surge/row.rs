//! One second of a surge run: the CSV row `run` writes and `plot` draws.

use serde::Serialize;

/// One second of the run, as written to the CSV.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub t: u64,
    pub arrived: u64,
    pub waiting: i64,
    pub waiting_min: i64,
    pub active: i64,
    pub served: u64,
    pub served_total: u64,
    pub errors: u64,
    pub feature_off: u64,
    pub queue_answers: u64,
    pub origin_inflight_mean: f64,
    pub origin_inflight_max: f64,
    pub origin_capacity: u64,
    pub origin_ok_per_s: f64,
    pub level: f64,
    /// ecluse's own view of the room (0 without ecluse): tickets waiting, sessions
    /// active, admissions per second.
    pub room_waiting: f64,
    pub room_active: f64,
    pub room_admitted_per_s: f64,
}

pub const CSV_HEADER: &str = "t,arrived,waiting,waiting_min,active,served,served_total,errors,feature_off,queue_answers,origin_inflight_mean,origin_inflight_max,origin_capacity,origin_ok_per_s,level,room_waiting,room_active,room_admitted_per_s";

impl Row {
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{:.2},{},{},{:.1},{},{},{},{:.1}",
            self.t,
            self.arrived,
            self.waiting,
            self.waiting_min,
            self.active,
            self.served,
            self.served_total,
            self.errors,
            self.feature_off,
            self.queue_answers,
            self.origin_inflight_mean,
            self.origin_inflight_max,
            self.origin_capacity,
            self.origin_ok_per_s,
            self.level,
            self.room_waiting,
            self.room_active,
            self.room_admitted_per_s
        )
    }

    pub fn parse(line: &str) -> Option<Row> {
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() < 18 {
            return None;
        }
        Some(Row {
            t: f[0].parse().ok()?,
            arrived: f[1].parse().ok()?,
            waiting: f[2].parse().ok()?,
            waiting_min: f[3].parse().ok()?,
            active: f[4].parse().ok()?,
            served: f[5].parse().ok()?,
            served_total: f[6].parse().ok()?,
            errors: f[7].parse().ok()?,
            feature_off: f[8].parse().ok()?,
            queue_answers: f[9].parse().ok()?,
            origin_inflight_mean: f[10].parse().ok()?,
            origin_inflight_max: f[11].parse().ok()?,
            origin_capacity: f[12].parse().ok()?,
            origin_ok_per_s: f[13].parse().ok()?,
            level: f[14].parse().ok()?,
            room_waiting: f[15].parse().ok()?,
            room_active: f[16].parse().ok()?,
            room_admitted_per_s: f[17].parse().ok()?,
        })
    }
}
