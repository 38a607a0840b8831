//! Weekly calendars for pool policies: the days and hours a pool may be used (`schedule`) and
//! when a warm set grows (`warm_schedule`), each in an IANA time zone.
//!
//! A [`Window`] is "these days, from this time to that one, in this zone". Its concrete periods
//! are worked out in the zone for the dates around the instant asked about, so daylight-saving
//! changes move them as the wall clock moves (a window that starts in a skipped hour starts at
//! the hour after it; jiff's "compatible" rule). A window whose end is not after its start runs
//! over midnight and belongs to the day it starts on. A [`Calendar`] is the union of its
//! windows; an empty one is always open.
//!
//! Times are wall-clock milliseconds since the Unix epoch, as the rest of the server keeps them.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use serde::{Deserialize, Deserializer};

/// How far ahead a calendar looks for the next opening or closing.
pub const HORIZON_DAYS: i32 = 8;

const MINUTES_PER_DAY: u16 = 24 * 60;

/// A set of weekdays (`"Mon-Fri"`, `"Sat,Sun"`, `"Fri-Mon"`, `"daily"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days(u8);

impl Days {
    pub const ALL: Days = Days(0x7f);

    pub fn contains(self, day: Weekday) -> bool {
        self.0 & (1 << day.to_monday_zero_offset()) != 0
    }
}

impl Default for Days {
    fn default() -> Self {
        Days::ALL
    }
}

fn weekday(name: &str) -> Option<u8> {
    const NAMES: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let name = name.trim().to_ascii_lowercase();
    if name.len() < 3 {
        return None;
    }
    NAMES
        .iter()
        .position(|full| full.starts_with(&name))
        .map(|i| i as u8)
}

impl FromStr for Days {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if ["daily", "*", "every day"].contains(&s.to_ascii_lowercase().as_str()) {
            return Ok(Days::ALL);
        }
        let bad = |part: &str| {
            format!(
                "{part:?} is not a day or a range of days: write e.g. \"Mon-Fri\", \"Sat,Sun\" \
                 or \"daily\""
            )
        };
        let mut mask = 0u8;
        for part in s.split(',') {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (
                    weekday(a).ok_or_else(|| bad(part))?,
                    weekday(b).ok_or_else(|| bad(part))?,
                ),
                None => {
                    let d = weekday(part).ok_or_else(|| bad(part))?;
                    (d, d)
                }
            };
            // A range may wrap over the week's end ("Fri-Mon").
            let mut d = first;
            loop {
                mask |= 1 << d;
                if d == last {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        Ok(Days(mask))
    }
}

/// A time of day, `"HH:MM"` (`"24:00"` is the end of the day), in minutes after midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay(pub u16);

impl FromStr for TimeOfDay {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a time of day: write it as HH:MM, from 00:00 to 24:00");
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let h: u16 = h.parse().map_err(|_| bad())?;
        let m: u16 = m.parse().map_err(|_| bad())?;
        if h > 24 || m > 59 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(TimeOfDay(h * 60 + m))
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// `"HH:MM-HH:MM"`: from the first time (included) to the second (excluded); a second time not
/// after the first runs over midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    pub start: TimeOfDay,
    pub end: TimeOfDay,
}

impl FromStr for Hours {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').ok_or_else(|| {
            format!("{s:?} is not a range of hours: write it as HH:MM-HH:MM, e.g. \"07:00-19:00\"")
        })?;
        let time = |t: &str| {
            t.parse::<TimeOfDay>().map_err(|_| {
                format!(
                    "{s:?} is not a range of hours: write it as HH:MM-HH:MM, from 00:00 to 24:00, \
                     e.g. \"07:00-19:00\""
                )
            })
        };
        let hours = Hours {
            start: time(a)?,
            end: time(b)?,
        };
        if hours.start.0 == MINUTES_PER_DAY {
            return Err(format!("{s:?} starts at 24:00: write 00:00"));
        }
        if hours.start == hours.end {
            return Err(format!(
                "{s:?} starts and ends at the same time: for the whole day write \"00:00-24:00\""
            ));
        }
        Ok(hours)
    }
}

/// An IANA time zone (`"Europe/Moscow"`, `"UTC"`), from the database built into the server.
#[derive(Clone)]
pub struct Zone(pub TimeZone);

impl Zone {
    pub fn utc() -> Zone {
        Zone(TimeZone::UTC)
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.iana_name().unwrap_or("(fixed)"))
    }
}

impl FromStr for Zone {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        TimeZone::get(s.trim()).map(Zone).map_err(|_| {
            format!("{s:?} is not a time zone this server knows: use an IANA name such as \"Europe/Moscow\" or \"UTC\"")
        })
    }
}

/// Serde for the types above, read from their strings.
macro_rules! from_string {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
from_string!(Days, TimeOfDay, Hours, Zone);

/// Some days, from one time to another, in a zone.
#[derive(Debug, Clone)]
pub struct Window {
    pub days: Days,
    pub hours: Hours,
    pub zone: Zone,
}

impl Window {
    /// The periods `[start, end)` (epoch ms) of the window that start on the dates from the
    /// day before `at_ms`'s date (in the window's zone) to [`HORIZON_DAYS`] after it.
    fn periods(&self, at_ms: u64, out: &mut Vec<(u64, u64)>) {
        let tz = &self.zone.0;
        let Ok(now) = Timestamp::from_millisecond(at_ms as i64) else {
            return;
        };
        let today = tz.to_datetime(now).date();
        let Ok(mut date) = today.yesterday() else {
            return;
        };
        for _ in 0..=HORIZON_DAYS + 1 {
            if self.days.contains(date.weekday())
                && let (Some(start), Some(end)) = (
                    instant(tz, date, self.hours.start),
                    if self.hours.end > self.hours.start {
                        instant(tz, date, self.hours.end)
                    } else {
                        date.tomorrow()
                            .ok()
                            .and_then(|next| instant(tz, next, self.hours.end))
                    },
                )
                && end > start
            {
                out.push((start, end));
            }
            match date.tomorrow() {
                Ok(next) => date = next,
                Err(_) => return,
            }
        }
    }
}

/// `time` on `date` in `tz`, in epoch ms (`24:00` is the next day's midnight).
fn instant(tz: &TimeZone, date: Date, time: TimeOfDay) -> Option<u64> {
    let (date, minutes) = if time.0 >= MINUTES_PER_DAY {
        (date.tomorrow().ok()?, time.0 - MINUTES_PER_DAY)
    } else {
        (date, time.0)
    };
    let dt = date.at((minutes / 60) as i8, (minutes % 60) as i8, 0, 0);
    let ts = tz.to_ambiguous_timestamp(dt).compatible().ok()?;
    u64::try_from(ts.as_millisecond()).ok()
}

/// Whether a calendar is open at an instant, and until when (or from when).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Openness {
    /// Open; `closes_at` is the end of the open stretch, `None` when it does not end within
    /// [`HORIZON_DAYS`] (or ever: an empty calendar).
    Open { closes_at: Option<u64> },
    /// Closed; `opens_at` is the next opening, `None` when there is none within the horizon.
    Closed { opens_at: Option<u64> },
}

impl Openness {
    pub fn is_open(self) -> bool {
        matches!(self, Openness::Open { .. })
    }
}

/// The union of some windows; empty means always open.
#[derive(Debug, Clone, Default)]
pub struct Calendar(pub Vec<Window>);

impl Calendar {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The calendar's merged periods around `at_ms`, in order.
    fn stretches(&self, at_ms: u64) -> Vec<(u64, u64)> {
        let mut periods = Vec::new();
        for w in &self.0 {
            w.periods(at_ms, &mut periods);
        }
        periods.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(periods.len());
        for (s, e) in periods {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }

    /// Open or closed at `at_ms`, and the next change within the horizon.
    pub fn at(&self, at_ms: u64) -> Openness {
        if self.0.is_empty() {
            return Openness::Open { closes_at: None };
        }
        let horizon = at_ms + HORIZON_DAYS as u64 * 86_400_000;
        let stretches = self.stretches(at_ms);
        if let Some(&(_, end)) = stretches.iter().find(|(s, e)| *s <= at_ms && at_ms < *e) {
            return Openness::Open {
                closes_at: (end < horizon).then_some(end),
            };
        }
        Openness::Closed {
            opens_at: stretches
                .iter()
                .map(|(s, _)| *s)
                .find(|s| *s > at_ms && *s < horizon),
        }
    }

    /// Whether `at_ms` falls in one of the windows.
    pub fn is_open(&self, at_ms: u64) -> bool {
        self.at(at_ms).is_open()
    }
}

pub use crate::domain::clock::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u64 {
        s.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    fn window(days: &str, hours: &str, zone: &str) -> Window {
        Window {
            days: days.parse().unwrap(),
            hours: hours.parse().unwrap(),
            zone: zone.parse().unwrap(),
        }
    }

    #[test]
    fn days_are_read_as_names_ranges_and_lists() {
        let mon_fri: Days = "Mon-Fri".parse().unwrap();
        assert_eq!(mon_fri, Days(0b0011111));
        assert_eq!("sat, Sunday".parse::<Days>().unwrap(), Days(0b1100000));
        assert_eq!("Fri-Mon".parse::<Days>().unwrap(), Days(0b1110001));
        assert_eq!("daily".parse::<Days>().unwrap(), Days::ALL);
        for bad in ["", "Mo", "Mon-", "Funday", "Mon-Fri-Sat"] {
            assert!(bad.parse::<Days>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hours_are_two_times_and_may_run_over_midnight() {
        let h: Hours = "07:00-19:30".parse().unwrap();
        assert_eq!((h.start.0, h.end.0), (420, 1170));
        assert!("22:00-06:00".parse::<Hours>().is_ok());
        assert!("00:00-24:00".parse::<Hours>().is_ok());
        for bad in [
            "7-19",
            "07:00",
            "07:00-07:00",
            "25:00-26:00",
            "07:60-08:00",
            "24:00-02:00",
            "+8:00-09:00",
            "08:+0-09:00",
        ] {
            assert!(bad.parse::<Hours>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zones_are_iana_names() {
        assert!("Europe/Moscow".parse::<Zone>().is_ok());
        assert!("UTC".parse::<Zone>().is_ok());
        assert!("Mars/Olympus".parse::<Zone>().is_err());
    }

    #[test]
    fn a_working_day_window_opens_and_closes_in_its_zone() {
        // Moscow is UTC+3 all year.
        let cal = Calendar(vec![window("Mon-Fri", "07:00-19:00", "Europe/Moscow")]);
        // Monday 2026-12-07 10:00 Moscow = 07:00 UTC.
        assert_eq!(
            cal.at(ms("2026-12-07T07:00:00Z")),
            Openness::Open {
                closes_at: Some(ms("2026-12-07T16:00:00Z"))
            }
        );
        // Monday 19:00 Moscow: closed until Tuesday 07:00.
        assert_eq!(
            cal.at(ms("2026-12-07T16:00:00Z")),
            Openness::Closed {
                opens_at: Some(ms("2026-12-08T04:00:00Z"))
            }
        );
        // Friday evening: closed until Monday.
        assert_eq!(
            cal.at(ms("2026-12-11T18:00:00Z")),
            Openness::Closed {
                opens_at: Some(ms("2026-12-14T04:00:00Z"))
            }
        );
        // Opening is included, closing excluded.
        assert!(cal.is_open(ms("2026-12-08T04:00:00Z")));
        assert!(!cal.is_open(ms("2026-12-08T15:59:59.999Z") + 1));
    }

    #[test]
    fn a_night_window_belongs_to_the_day_it_starts_on() {
        let cal = Calendar(vec![window("Fri", "22:00-06:00", "UTC")]);
        // Saturday 03:00 is in Friday's night.
        assert!(cal.is_open(ms("2026-12-12T03:00:00Z")));
        // Friday 03:00 is in Thursday's night, which has none.
        assert!(!cal.is_open(ms("2026-12-11T03:00:00Z")));
        assert_eq!(
            cal.at(ms("2026-12-11T23:00:00Z")),
            Openness::Open {
                closes_at: Some(ms("2026-12-12T06:00:00Z"))
            }
        );
    }

    #[test]
    fn adjacent_windows_are_one_stretch_and_an_always_open_week_never_closes() {
        let cal = Calendar(vec![
            window("Mon-Fri", "00:00-12:00", "UTC"),
            window("Mon-Fri", "12:00-24:00", "UTC"),
        ]);
        assert_eq!(
            cal.at(ms("2026-12-07T11:00:00Z")),
            Openness::Open {
                closes_at: Some(ms("2026-12-12T00:00:00Z"))
            }
        );
        let always = Calendar(vec![window("daily", "00:00-24:00", "UTC")]);
        assert_eq!(
            always.at(ms("2026-12-07T11:00:00Z")),
            Openness::Open { closes_at: None }
        );
        assert_eq!(
            Calendar::default().at(0),
            Openness::Open { closes_at: None }
        );
    }

    #[test]
    fn daylight_saving_moves_the_window_with_the_wall_clock() {
        let cal = Calendar(vec![window("daily", "08:00-09:00", "Europe/Berlin")]);
        // Winter: UTC+1; summer (from 2026-03-29): UTC+2.
        assert!(cal.is_open(ms("2026-03-28T07:30:00Z")));
        assert!(cal.is_open(ms("2026-03-30T06:30:00Z")));
        assert!(!cal.is_open(ms("2026-03-30T07:30:00Z")));
        // A window starting in the skipped hour (02:00-03:00 on 2026-03-29) starts after it.
        let skipped = Calendar(vec![window("Sun", "02:30-04:00", "Europe/Berlin")]);
        assert_eq!(
            skipped.at(ms("2026-03-28T12:00:00Z")),
            Openness::Closed {
                opens_at: Some(ms("2026-03-29T01:30:00Z"))
            }
        );
    }

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(rfc3339(ms("2026-12-08T04:00:00Z")), "2026-12-08T04:00:00Z");
    }
}
