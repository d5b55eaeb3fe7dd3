//! Following a sweep's jobs without loading the controller: one `squeue` per poll for every
//! job of the sweep, fast while states change, backing off while they do not.

use std::collections::BTreeMap;
use std::time::Duration;

use super::JobRow;

/// When a submitter polls `squeue`: every [`PollSchedule::FASTEST`] while the jobs' states
/// change, ×1.5 per unchanged poll up to [`PollSchedule::SLOWEST`], ×2 after a failed poll.
///
/// Sites commonly ask for at most 12 Slurm commands a minute per user. The fastest interval
/// leaves headroom under that: 7.5 polls a minute, and with the submission's three commands
/// (`sbatch --version` and two `sbatch`; a plan submitted again adds one `squeue`) at most 10
/// (11) in the first minute.
#[derive(Debug, Clone)]
pub struct PollSchedule {
    interval: Duration,
    last: BTreeMap<String, usize>,
    failures: u32,
}

impl Default for PollSchedule {
    fn default() -> Self {
        Self::new()
    }
}

impl PollSchedule {
    /// The shortest wait between two polls.
    pub const FASTEST: Duration = Duration::from_secs(8);
    /// The longest wait between two polls.
    pub const SLOWEST: Duration = Duration::from_secs(60);
    /// Failed polls in a row after which a submitter should give up following.
    pub const MAX_FAILURES: u32 = 5;

    /// A schedule whose first poll comes after [`PollSchedule::FASTEST`].
    pub fn new() -> Self {
        Self {
            interval: Self::FASTEST,
            last: BTreeMap::new(),
            failures: 0,
        }
    }

    /// The wait before the next poll.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Takes a poll's rows; returns the jobs per state when they differ from the last poll's.
    pub fn observe(&mut self, rows: &[JobRow]) -> Option<&BTreeMap<String, usize>> {
        self.failures = 0;
        let counts = state_counts(rows);
        if counts == self.last {
            self.interval = self.interval.mul_f64(1.5).min(Self::SLOWEST);
            None
        } else {
            self.last = counts;
            self.interval = Self::FASTEST;
            Some(&self.last)
        }
    }

    /// Takes a failed poll (a busy controller times out now and then): waits longer. Returns
    /// whether to go on, false after [`PollSchedule::MAX_FAILURES`] failures in a row.
    pub fn failed(&mut self) -> bool {
        self.failures += 1;
        self.interval = (self.interval * 2).min(Self::SLOWEST);
        self.failures < Self::MAX_FAILURES
    }
}

/// Jobs (array tasks and plain jobs) per lowercase Slurm state.
pub fn state_counts(rows: &[JobRow]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for row in rows {
        *counts.entry(row.state.to_lowercase()).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(task: usize, state: &str) -> JobRow {
        JobRow {
            job: "7".into(),
            task: Some(task),
            state: state.into(),
        }
    }

    #[test]
    fn polls_stay_under_ten_a_minute_even_when_every_poll_sees_a_change() {
        let mut schedule = PollSchedule::new();
        let mut elapsed = Duration::ZERO;
        let mut polls = 0u32;
        while elapsed < Duration::from_secs(3600) {
            elapsed += schedule.interval();
            polls += 1;
            let state = if polls.is_multiple_of(2) {
                "RUNNING"
            } else {
                "PENDING"
            };
            assert!(schedule.observe(&[row(0, state)]).is_some());
        }
        // 3600 s / 8 s = 450 polls in the hour: 7.5 a minute, plus the 3 submission commands
        // in the first minute makes 10.
        assert!(polls <= 451, "{polls} polls in an hour");
        assert_eq!(schedule.interval(), PollSchedule::FASTEST);
    }

    #[test]
    fn unchanged_states_back_off_to_a_minute_and_a_change_resets() {
        let mut schedule = PollSchedule::new();
        let rows = [row(0, "RUNNING"), row(1, "PENDING")];
        assert_eq!(
            schedule.observe(&rows).map(|c| c.len()),
            Some(2),
            "the first poll is a change"
        );
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert!(schedule.observe(&rows).is_none());
            waits.push(schedule.interval().as_secs_f64());
        }
        assert_eq!(waits[0], 12.0);
        assert_eq!(waits[1], 18.0);
        assert_eq!(*waits.last().unwrap(), 60.0);
        assert!(schedule.observe(&[row(0, "COMPLETED")]).is_some());
        assert_eq!(schedule.interval(), PollSchedule::FASTEST);
    }

    #[test]
    fn five_failed_polls_in_a_row_give_up_and_a_good_poll_forgives() {
        let mut schedule = PollSchedule::new();
        for _ in 0..4 {
            assert!(schedule.failed());
        }
        schedule.observe(&[]);
        for _ in 0..4 {
            assert!(schedule.failed());
        }
        assert!(!schedule.failed());
        assert_eq!(schedule.interval(), PollSchedule::SLOWEST);
    }
}
