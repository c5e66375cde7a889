//! Text tables as kubectl prints them: left-aligned columns, and ages such
//! as `5s`, `3m20s`, `4d`.

/// `rows` as left-aligned columns two spaces apart.
pub(crate) fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The time from `then_ns` to `now_ns` as kubectl's AGE and LAST-SEEN
/// columns show it (apimachinery's `duration.HumanDuration`): seconds up to
/// 2 minutes, then minutes (with seconds below 10 minutes), hours (with
/// minutes below 8 hours), days (with hours below 8 days), years. Written
/// here because the point is to read exactly like kubectl, whose rounding
/// rules no crate follows.
pub(crate) fn age(then_ns: i128, now_ns: i128) -> String {
    let secs = (now_ns - then_ns).div_euclid(1_000_000_000);
    // kubectl's tolerance for clocks that disagree by a second.
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let with = |big: i128, unit: &str, small: i128, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    let (minutes, hours) = (secs / 60, secs / 3600);
    let days = hours / 24;
    match () {
        _ if secs < 120 => format!("{secs}s"),
        _ if minutes < 10 => with(minutes, "m", secs % 60, "s"),
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 => with(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => with(days, "d", hours % 24, "h"),
        _ if hours < 24 * 365 * 2 => format!("{days}d"),
        _ if hours < 24 * 365 * 8 => with(days / 365, "y", days % 365, "d"),
        _ => format!("{}y", days / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let rows = [
            ["DEVICE", "WARNING"].map(String::from),
            ["pi-001", "disk full"].map(String::from),
            ["a", "x"].map(String::from),
        ];
        assert_eq!(
            aligned(&rows),
            "DEVICE  WARNING\npi-001  disk full\na       x\n"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        const S: i128 = 1_000_000_000;
        let now = 1_000_000 * S;
        let ago = |secs: i128| age(now - secs * S, now);
        for (secs, shown) in [
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (185, "3m5s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 125, "3h2m"),
            (8 * 3600, "8h"),
            (47 * 3600, "47h"),
            (2 * 86400, "2d"),
            (4 * 86400 + 3 * 3600, "4d3h"),
            (30 * 86400, "30d"),
            (800 * 86400, "2y70d"),
            (10 * 365 * 86400, "10y"),
        ] {
            assert_eq!(ago(secs), shown, "{secs}s");
        }
        assert_eq!(age(now + S / 2, now), "0s", "half a second ahead is now");
        assert_eq!(age(now + 5 * S, now), "<invalid>");
    }
}
