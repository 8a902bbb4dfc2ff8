//! Lexical checks of the XML Schema datatypes a notification uses, on the value the XML parser
//! delivers (references decoded, line ends normalised). Where libxml2 (the reference validator,
//! `xmllint --schema`) departs from the XSD 1.0 text, these follow libxml2 2.9, because the gateway
//! must give xmllint's verdict; each such place says so.

/// The XML whitespace characters (S production), which the schema's `whiteSpace` facets act on.
pub(super) fn is_xml_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn trim_xml_space(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| !is_xml_space(b)).unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| !is_xml_space(b))
        .map_or(start, |p| p + 1);
    &v[start..end]
}

/// `xs:boolean`: `true`, `false`, `1` or `0`, surrounding whitespace ignored.
pub(super) fn parse_boolean(v: &[u8]) -> Option<bool> {
    match trim_xml_space(v) {
        b"true" | b"1" => Some(true),
        b"false" | b"0" => Some(false),
        _ => None,
    }
}

/// `xs:int`: optional sign, at least one digit, within `i32`. libxml2 2.9 does not apply the
/// type's whitespace collapse to element content here: `" 5"` and `"5 "` are invalid for it, and
/// so for us. Leading zeros are unlimited.
pub(super) fn parse_int(v: &[u8]) -> Option<i32> {
    let (negative, digits) = match v.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, v),
    };
    if digits.is_empty() {
        return None;
    }
    let mut magnitude: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude * 10 + i64::from(b - b'0');
        if magnitude > 1 << 31 {
            return None;
        }
    }
    let value = if negative { -magnitude } else { magnitude };
    i32::try_from(value).ok()
}

/// `xs:language` (for `xml:lang`): whitespace collapsed, then
/// `[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*`.
pub(super) fn is_language(v: &[u8]) -> bool {
    let v = trim_xml_space(v);
    if v.is_empty() {
        return false;
    }
    v.split(|&b| b == b'-').enumerate().all(|(index, subtag)| {
        (1..=8).contains(&subtag.len())
            && subtag
                .iter()
                .all(|&b| b.is_ascii_alphabetic() || (index > 0 && b.is_ascii_digit()))
    })
}

/// `xs:dateTime`, as libxml2 2.9 reads it:
/// `-?YYYY-MM-DDThh:mm:ss(.s+)?(Z|[+-]hh:mm)?`, a year of four or more digits (no leading zero
/// when longer, not zero, within a 64-bit integer), real month lengths with leap years computed on
/// the signed year, `24:00:00` as end of day, seconds computed in binary floating point exactly
/// as libxml2 does (so `59.99999999999999` rounds to 60 and is refused), offsets within ±14:00.
/// libxml2's whitespace handling is lopsided and copied here: leading whitespace is refused,
/// trailing whitespace is accepted only after a time zone.
pub(super) fn is_date_time(v: &[u8]) -> bool {
    date_time(v).is_some()
}

fn two_digits(v: &[u8], at: usize) -> Option<u32> {
    match (v.get(at), v.get(at + 1)) {
        (Some(&a), Some(&b)) if a.is_ascii_digit() && b.is_ascii_digit() => {
            Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
        }
        _ => None,
    }
}

fn expect(v: &[u8], at: usize, byte: u8) -> Option<usize> {
    (v.get(at) == Some(&byte)).then_some(at + 1)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn date_time(v: &[u8]) -> Option<()> {
    let mut at = 0;
    let negative = v.first() == Some(&b'-');
    if negative {
        at = 1;
    }
    let first_digit = at;
    let mut year: i64 = 0;
    while let Some(&b) = v.get(at).filter(|b| b.is_ascii_digit()) {
        year = year.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
        at += 1;
    }
    let digits = at - first_digit;
    if digits < 4 || (digits > 4 && v[first_digit] == b'0') || year == 0 {
        return None;
    }
    if negative {
        year = -year;
    }
    at = expect(v, at, b'-')?;
    let month = two_digits(v, at)?;
    at += 2;
    at = expect(v, at, b'-')?;
    let day = two_digits(v, at)?;
    at += 2;
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > month_days {
        return None;
    }
    at = expect(v, at, b'T')?;
    let hour = two_digits(v, at)?;
    at += 2;
    at = expect(v, at, b':')?;
    let minute = two_digits(v, at)?;
    at += 2;
    at = expect(v, at, b':')?;
    let whole_seconds = two_digits(v, at)?;
    at += 2;
    // libxml2 accumulates the fraction in a double, one decimal at a time; the comparison with
    // 60 below must see the same rounding.
    let mut seconds = f64::from(whole_seconds);
    if v.get(at) == Some(&b'.') {
        at += 1;
        if !v.get(at).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let mut scale = 1.0_f64;
        while let Some(&b) = v.get(at).filter(|b| b.is_ascii_digit()) {
            scale /= 10.0;
            seconds += f64::from(b - b'0') * scale;
            at += 1;
        }
    }
    let ordinary = hour <= 23 && minute <= 59 && (0.0..60.0).contains(&seconds);
    let end_of_day = hour == 24 && minute == 0 && seconds == 0.0;
    if !(ordinary || end_of_day) {
        return None;
    }
    match v.get(at) {
        None => return Some(()),
        Some(b'Z') => at += 1,
        Some(b'+' | b'-') => {
            let offset_hours = two_digits(v, at + 1)?;
            at = expect(v, at + 3, b':')?;
            let offset_minutes = two_digits(v, at)?;
            at += 2;
            let offset = offset_hours * 60 + offset_minutes;
            if offset_hours > 23 || offset_minutes > 59 || offset > 14 * 60 {
                return None;
            }
        }
        Some(_) => return None,
    }
    v[at..].iter().all(|&b| is_xml_space(b)).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every verdict below was taken from `xmllint --schema` (libxml2 2.9.14) on a notification
    // whose TimeStamp, UnreadCount, MoreEvents or xml:lang held the value.

    #[test]
    fn date_time_accepts_what_libxml2_accepts() {
        for value in [
            "2020-01-01T00:00:00Z",
            "0001-01-01T00:00:00",
            "-0001-01-01T00:00:00",
            "10000-01-01T00:00:00",
            "2020-02-29T00:00:00",
            "2000-02-29T00:00:00",
            "-0004-02-29T00:00:00",
            "2020-01-01T24:00:00",
            "2020-01-01T24:00:00.0",
            "2020-12-31T24:00:00+14:00",
            "2020-01-01T23:59:59.1234567890123",
            "2020-01-01T23:59:59.9999999999999Z",
            "2020-01-01T23:59:59.9999999+14:00",
            "2020-01-01T00:00:00.0000000000000000000000001Z",
            "2020-01-01T00:00:00+14:00",
            "2020-01-01T00:00:00-14:00",
            "2020-01-01T00:00:00+00:00",
            "2020-01-01T00:00:00-00:00",
            "2020-01-01T00:00:00.5Z",
            "2020-01-01T00:00:00Z ",
            "2020-01-01T00:00:00Z  ",
            "2020-01-01T00:00:00Z\n",
            "2020-01-01T00:00:00Z\t",
            "2020-01-01T00:00:00+01:00 ",
            "2147485547-01-01T00:00:00",
            "99999999999999-01-01T00:00:00",
            "9223372036854775807-01-01T00:00:00Z",
            "-9223372036854775807-01-01T00:00:00Z",
            "-10000-01-01T00:00:00",
        ] {
            assert!(is_date_time(value.as_bytes()), "{value:?} should be valid");
        }
    }

    #[test]
    fn date_time_refuses_what_libxml2_refuses() {
        for value in [
            "",
            "0000-01-01T00:00:00",
            "-0000-01-01T00:00:00",
            "01000-01-01T00:00:00",
            "999-01-01T00:00:00",
            "-1-01-01T00:00:00",
            "+2020-01-01T00:00:00",
            "2019-02-29T00:00:00",
            "1900-02-29T00:00:00",
            "-0001-02-29T00:00:00",
            "-0005-02-29T00:00:00",
            "2020-04-31T00:00:00",
            "2020-13-01T00:00:00",
            "2020-00-01T00:00:00",
            "2020-01-00T00:00:00",
            "2020-01-01T24:00:01",
            "2020-01-01T24:00:00.00000000000000000001Z",
            "2020-01-01T23:59:60",
            "2020-01-01T00:60:00",
            "2020-01-01T23:59:59.",
            "2020-01-01T00:00:00.Z",
            "2020-01-01T23:59:59.99999999999999Z",
            "2020-01-01T23:59:59.999999999999999Z",
            "2020-01-01T00:00:00+14:01",
            "2020-01-01T00:00:00+13:60",
            "2020-01-01T00:00:00+1:00",
            "2020-01-01T00:00:00+01",
            " 2020-01-01T00:00:00Z",
            "\n2020-01-01T00:00:00Z",
            "\t2020-01-01T00:00:00Z",
            "2020-01-01T00:00:00 ",
            "2020-01-01T00:00:00  ",
            "2020-01-01T00:00:00 Z",
            "2020-01-01T00:00:00Z x",
            "2020-01-01T00:00:00z",
            "2020-01-01t00:00:00",
            "2020-1-01T00:00:00",
            "2020-01-01T0:00:00",
            "2020-01-01",
            "2020-01-01\tT00:00:00Z",
            "12:00:00Z",
            "99999999999999999999-01-01T00:00:00",
            "9223372036854775808-01-01T00:00:00Z",
            "-9223372036854775808-01-01T00:00:00Z",
        ] {
            assert!(
                !is_date_time(value.as_bytes()),
                "{value:?} should be invalid"
            );
        }
    }

    #[test]
    fn int_follows_libxml2() {
        for (value, expected) in [
            ("0", Some(0)),
            ("-0", Some(0)),
            ("+0", Some(0)),
            ("2147483647", Some(i32::MAX)),
            ("-2147483648", Some(i32::MIN)),
            ("0000000000000000000000000000000000000001", Some(1)),
            ("2147483648", None),
            ("-2147483649", None),
            ("99999999999999999999999", None),
            (" 5", None),
            ("5 ", None),
            ("\t7\n", None),
            ("+-5", None),
            ("1 2", None),
            ("", None),
            ("-", None),
            ("1.0", None),
            ("\u{663}", None),
        ] {
            assert_eq!(parse_int(value.as_bytes()), expected, "{value:?}");
        }
    }

    #[test]
    fn boolean_collapses_whitespace() {
        for (value, expected) in [
            ("true", Some(true)),
            ("false", Some(false)),
            ("1", Some(true)),
            ("0", Some(false)),
            (" true", Some(true)),
            ("true ", Some(true)),
            ("\n1\n", Some(true)),
            ("True", None),
            ("tru", None),
            ("truex", None),
            ("", None),
            ("true false", None),
            ("t rue", None),
        ] {
            assert_eq!(parse_boolean(value.as_bytes()), expected, "{value:?}");
        }
    }

    #[test]
    fn language_tags() {
        for value in [
            "en",
            " en ",
            "en-US",
            "x-klingon",
            "i-default",
            "en-1a",
            "abcdefgh-12345678",
        ] {
            assert!(is_language(value.as_bytes()), "{value:?}");
        }
        for value in [
            "",
            " ",
            "en-",
            "-en",
            "1en",
            "en1",
            "abcdefghi",
            "en-123456789",
            "en--us",
            "en us",
            "é",
        ] {
            assert!(!is_language(value.as_bytes()), "{value:?}");
        }
    }
}
