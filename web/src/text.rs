//! Small text helpers every view shares: times, durations, numbers, base64, URL path segments, enum labels.

use plankton_proto::v1::{Job, JobPhase};

/// The model a job trains as operators name it: `spec.model`, "resnet" when empty (the coordinator's default).
pub fn model_of(job: &Job) -> String {
    let model = job.spec.as_ref().map_or("", |spec| spec.model.as_str());
    if model.is_empty() {
        "resnet".to_string()
    } else {
        model.to_string()
    }
}

/// The job's name from its spec ("" when there is no spec).
pub fn name_of(job: &Job) -> &str {
    job.spec.as_ref().map_or("", |spec| spec.name.as_str())
}

/// Epochs the job plans (0 when there is no spec).
pub fn planned_epochs(job: &Job) -> u32 {
    job.spec.as_ref().map_or(0, |spec| spec.epochs)
}

/// Optimizer steps of the whole job (epochs x steps per epoch); 0 until the coordinator knows the shards.
pub fn total_steps(job: &Job) -> u64 {
    u64::from(planned_epochs(job)) * job.steps_per_epoch
}

/// Whether the job has reached a phase it never leaves (the dashboard stops refreshing it).
pub fn is_finished(job: &Job) -> bool {
    matches!(
        job.phase(),
        JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled
    )
}

/// The best macro-F1 over the job's evaluated epochs.
pub fn best_macro_f1(job: &Job) -> Option<f64> {
    job.epochs
        .iter()
        .map(|metrics| metrics.macro_f1)
        .filter(|value| value.is_finite())
        .fold(None, |best: Option<f64>, value| {
            Some(best.map_or(value, |best| best.max(value)))
        })
}

/// The name of class `index`: the job's class name, else "class {index}".
pub fn class_name(class_names: &[String], index: usize) -> String {
    match class_names.get(index) {
        Some(name) if !name.is_empty() => name.clone(),
        _ => format!("class {index}"),
    }
}

/// `text` cut to `limit` characters, an ellipsis marking the cut.
pub fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let kept: String = text.chars().take(limit.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// Unix milliseconds as "YYYY-MM-DD HH:MM:SS UTC"; "-" for 0 or less (not happened yet).
pub fn time_of(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".to_string();
    }
    let seconds = unix_ms.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Unix milliseconds as RFC 3339 (for `<time datetime>`); "" for 0 or less.
pub fn rfc3339_of(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return String::new();
    }
    time_of(unix_ms).replace(" UTC", "Z").replacen(' ', "T", 1)
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration for people: "850 ms", "4.2 s", "3 min 5 s", "2 h 07 min".
pub fn duration_text(milliseconds: i64) -> String {
    if milliseconds < 0 {
        return "-".to_string();
    }
    if milliseconds < 1000 {
        return format!("{milliseconds} ms");
    }
    let seconds = milliseconds as f64 / 1000.0;
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let whole_seconds = milliseconds / 1000;
    if whole_seconds < 3600 {
        return format!("{} min {} s", whole_seconds / 60, whole_seconds % 60);
    }
    if whole_seconds < 86_400 {
        return format!(
            "{} h {:02} min",
            whole_seconds / 3600,
            whole_seconds % 3600 / 60
        );
    }
    format!(
        "{} d {} h",
        whole_seconds / 86_400,
        whole_seconds % 86_400 / 3600
    )
}

/// A metric in [0, 1] with 4 decimals; "-" when not finite.
pub fn metric_text(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.4}")
    } else {
        "-".to_string()
    }
}

/// A loss with 4 decimals ("NaN"/"inf" spelled out: a non-finite loss is news, not a blank).
pub fn loss_text(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.4}")
    } else {
        format!("{value}")
    }
}

/// A whole number with thin groups: 1234567 -> "1 234 567" (narrow no-break spaces).
pub fn count_text(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(digit);
    }
    out
}

/// `"CLASS_WEIGHTING_SQRT"` with prefix `"CLASS_WEIGHTING_"` -> `"sqrt"`; how the report names enum values.
pub fn enum_label(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .to_ascii_lowercase()
        .replace('_', " ")
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved characters), so a job id with a
/// slash or a quote still makes one well-formed link.
pub fn path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), for `data:` URIs.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let first = chunk[0];
        let second = chunk.get(1).copied().unwrap_or(0);
        let third = chunk.get(2).copied().unwrap_or(0);
        let group = (u32::from(first) << 16) | (u32::from(second) << 8) | u32::from(third);
        out.push(ALPHABET[(group >> 18) as usize & 63] as char);
        out.push(ALPHABET[(group >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(group >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[group as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded, "base64 of {plain:?}");
        }
        assert_eq!(base64(&[0xff, 0xd8, 0xff]), "/9j/");
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(time_of(0), "-");
        assert_eq!(time_of(1_000), "1970-01-01 00:00:01 UTC");
        assert_eq!(time_of(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(time_of(1_796_088_604_000), "2026-12-01 01:30:04 UTC");
        assert_eq!(rfc3339_of(1_796_088_604_000), "2026-12-01T01:30:04Z");
    }

    #[test]
    fn durations_and_counts_read_naturally() {
        assert_eq!(duration_text(850), "850 ms");
        assert_eq!(duration_text(4_200), "4.2 s");
        assert_eq!(duration_text(185_000), "3 min 5 s");
        assert_eq!(duration_text(7_620_000), "2 h 07 min");
        assert_eq!(count_text(1_234_567), "1\u{202f}234\u{202f}567");
        assert_eq!(count_text(999), "999");
    }

    #[test]
    fn path_segments_and_enum_labels() {
        assert_eq!(path_segment("job-1_a.b~"), "job-1_a.b~");
        assert_eq!(path_segment("a/b \"c\""), "a%2Fb%20%22c%22");
        assert_eq!(enum_label("LR_SCHEDULE_COSINE", "LR_SCHEDULE_"), "cosine");
        assert_eq!(
            enum_label("RESIZE_PAD_TO_SQUARE", "RESIZE_"),
            "pad to square"
        );
    }
}
