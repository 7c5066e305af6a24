//! Saying a message's date and time as `[zonemessages]` describes it, for example
//! `America/Los_Angeles|'vm-received' Q 'digits/at' IMp`: quoted prompt names and
//! Asterisk's date letters, in the zone's time.

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

use crate::audio::{number, ordinal, Item};

/// Asterisk's format when the mailbox has no zone.
pub const DEFAULT_FORMAT: &str = "'vm-received' q 'digits/at' IMp";

/// The playlist for `when` (a message's origtime) said in `tz` per `format`, relative
/// to `now` for `Q` and `q` (today, yesterday).
pub fn say(format: &str, tz: Tz, when: DateTime<Utc>, now: DateTime<Utc>) -> Vec<Item> {
    let t = when.with_timezone(&tz);
    let today = now.with_timezone(&tz).date_naive();
    let mut out = Vec::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let name: String = chars.by_ref().take_while(|&c| c != '\'').collect();
                if !name.is_empty() {
                    out.push(Item::Named(name));
                }
            }
            'A' | 'a' => out.push(Item::Named(format!(
                "digits/day-{}",
                t.weekday().num_days_from_sunday()
            ))),
            'B' | 'b' | 'h' => out.push(Item::Named(format!("digits/mon-{}", t.month0()))),
            'd' | 'e' => ordinal(t.day(), &mut out),
            'Y' => number(t.year().max(0) as u32, &mut out),
            'I' | 'l' => {
                let h = t.hour() % 12;
                number(if h == 0 { 12 } else { h }, &mut out);
            }
            'H' | 'k' => number(t.hour(), &mut out),
            'M' => match t.minute() {
                0 => out.push(Item::Prompt("digits/oclock")),
                m @ 1..=9 => {
                    out.push(Item::Prompt("digits/oh"));
                    number(m, &mut out);
                }
                m => number(m, &mut out),
            },
            'P' | 'p' => out.push(Item::Prompt(if t.hour() < 12 {
                "digits/a-m"
            } else {
                "digits/p-m"
            })),
            'Q' | 'q' => {
                let days = (today - t.date_naive()).num_days();
                match days {
                    0 => out.push(Item::Prompt("digits/today")),
                    1 => out.push(Item::Prompt("digits/yesterday")),
                    2..=6 if c == 'q' => out.push(Item::Named(format!(
                        "digits/day-{}",
                        t.weekday().num_days_from_sunday()
                    ))),
                    _ => {
                        out.push(Item::Named(format!(
                            "digits/day-{}",
                            t.weekday().num_days_from_sunday()
                        )));
                        out.push(Item::Named(format!("digits/mon-{}", t.month0())));
                        ordinal(t.day(), &mut out);
                        if t.year() != today.year() {
                            number(t.year().max(0) as u32, &mut out);
                        }
                    }
                }
            }
            'R' => {
                number(t.hour(), &mut out);
                number(t.minute(), &mut out);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn names(items: &[Item]) -> String {
        crate::audio::item_names(items).join(" ")
    }

    #[test]
    fn the_seeds_pacific_zone() {
        let tz: Tz = "America/Los_Angeles".parse().unwrap();
        // 2026-11-26 23:05 UTC is 15:05 in Los Angeles (PST, UTC-8).
        let when = Utc.with_ymd_and_hms(2026, 11, 26, 23, 5, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 1, 0, 0).unwrap();
        assert_eq!(
            names(&say("'vm-received' Q 'digits/at' IMp", tz, when, now)),
            "vm-received digits/today digits/at digits/3 digits/oh digits/5 digits/p-m"
        );
        let later = Utc.with_ymd_and_hms(2026, 12, 9, 1, 0, 0).unwrap();
        assert_eq!(
            names(&say("'vm-received' Q 'digits/at' IMp", tz, when, later)),
            "vm-received digits/day-4 digits/mon-10 digits/20 digits/h-6 digits/at digits/3 digits/oh digits/5 digits/p-m"
        );
    }

    #[test]
    fn midnight_noon_and_yesterday() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let when = Utc.with_ymd_and_hms(2026, 6, 1, 4, 0, 0).unwrap(); // 00:00 EDT
        let now = Utc.with_ymd_and_hms(2026, 6, 2, 16, 0, 0).unwrap();
        assert_eq!(
            names(&say("Q IMp", tz, when, now)),
            "digits/yesterday digits/12 digits/oclock digits/a-m"
        );
    }
}
