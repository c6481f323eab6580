//! Conformance of the selector language to JMS 1.1 §3.8 (and ActiveMQ where JMS is silent),
//! and a property test that no text makes the parser or evaluator panic.

use proptest::prelude::*;

use super::{MessageView, Selector};

struct Msg {
    headers: Vec<(&'static str, &'static str)>,
    priority: u8,
    timestamp_ms: u64,
    persistent: bool,
    jms_type: Option<&'static str>,
    correlation_id: Option<&'static str>,
    message_id: Option<&'static str>,
}

impl MessageView for Msg {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }
    fn priority(&self) -> u8 {
        self.priority
    }
    fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }
    fn persistent(&self) -> bool {
        self.persistent
    }
    fn jms_type(&self) -> Option<&str> {
        self.jms_type
    }
    fn correlation_id(&self) -> Option<&str> {
        self.correlation_id
    }
    fn message_id(&self) -> Option<String> {
        self.message_id.map(String::from)
    }
}

fn msg() -> Msg {
    Msg {
        headers: vec![
            ("color", "red"),
            ("size", "10"),
            ("weight", "2.5"),
            ("flag", "true"),
            ("off", "FALSE"),
            ("name", "O'Brien"),
            ("code", "a_b%c"),
            ("empty", ""),
            ("word", "abc"),
            ("neg", "-3"),
            ("Color", "blue"),
        ],
        priority: 7,
        timestamp_ms: 1_000,
        persistent: true,
        jms_type: Some("order"),
        correlation_id: Some("c-1"),
        message_id: Some("ID:p-1:42"),
    }
}

fn bare() -> Msg {
    Msg {
        headers: vec![],
        priority: 4,
        timestamp_ms: 5,
        persistent: false,
        jms_type: None,
        correlation_id: None,
        message_id: None,
    }
}

/// (selector, matches `msg()`).
const TABLE: &[(&str, bool)] = &[
    // literals and equality
    ("TRUE", true),
    ("FALSE", false),
    ("true", true),
    ("color = 'red'", true),
    ("color = 'Red'", false),
    ("color <> 'blue'", true),
    ("Color = 'blue'", true),
    ("name = 'O''Brien'", true),
    ("empty = ''", true),
    ("'red' = color", true),
    // numbers: exact, approximate, promotion
    ("JMSPriority = 7", true),
    ("JMSPriority = 7.0", true),
    ("JMSPriority > 6.5", true),
    ("JMSPriority >= 7 AND JMSPriority <= 7", true),
    ("JMSPriority < 7", false),
    ("JMSPriority <> 7", false),
    ("JMSPriority = 07", true),
    ("JMSPriority = 0x7", true),
    ("JMSPriority = 7L", true),
    ("JMSPriority = 70E-1", true),
    ("JMSPriority = .7e1", true),
    ("JMSTimestamp = 1000", true),
    ("JMSTimestamp > 999 AND JMSTimestamp < 1001", true),
    ("-9223372036854775808 < 0", true),
    ("9223372036854775807 > 0", true),
    // header strings stand in for numbers and booleans (ActiveMQ's STOMP rule)
    ("size = 10", true),
    ("size > 9", true),
    ("size > 9.5", true),
    ("size < 10", false),
    ("size = 10.0", true),
    ("weight > 2", true),
    ("weight = 2.5", true),
    ("neg < 0", true),
    ("size * 2 = 20", true),
    ("size / 4 = 2", true),
    ("size / 4.0 = 2.5", true),
    ("flag", true),
    ("flag = TRUE", true),
    ("off = FALSE", true),
    ("NOT off", true),
    ("word > 1", false),
    ("NOT (word > 1)", true),
    ("word = 1", false),
    ("word <> 1", false),
    ("word", false),
    ("NOT word", false),
    // arithmetic and precedence
    ("1 + 2 * 3 = 7", true),
    ("(1 + 2) * 3 = 9", true),
    ("10 - 4 - 3 = 3", true),
    ("100 / 10 / 5 = 2", true),
    ("7 / 2 = 3", true),
    ("7 / 2.0 = 3.5", true),
    ("-JMSPriority = -7", true),
    ("- -7 = 7", true),
    ("+7 = 7", true),
    ("1 / 0 = 1", false),
    ("NOT (1 / 0 = 1)", false),
    ("1.0 / 0 > 1000000", true),
    ("9223372036854775807 + 1 < 0", true),
    ("TRUE OR FALSE AND FALSE", true),
    ("(TRUE OR FALSE) AND FALSE", false),
    ("NOT FALSE AND FALSE", false),
    ("NOT (FALSE AND FALSE)", true),
    ("color = 'red' AND size = 10 OR color = 'blue'", true),
    ("color = 'blue' OR size = 10 AND flag", true),
    // BETWEEN
    ("JMSPriority BETWEEN 5 AND 9", true),
    ("JMSPriority BETWEEN 7 AND 7", true),
    ("JMSPriority BETWEEN 8 AND 9", false),
    ("JMSPriority NOT BETWEEN 8 AND 9", true),
    ("JMSPriority NOT BETWEEN 1 AND 9", false),
    ("size BETWEEN 9.5 AND 10.5", true),
    ("JMSPriority BETWEEN 1 + 5 AND 2 * 4", true),
    ("missing BETWEEN 1 AND 2", false),
    ("missing NOT BETWEEN 1 AND 2", false),
    ("word BETWEEN 1 AND 2", false),
    // IN
    ("color IN ('red', 'green')", true),
    ("color IN ('green')", false),
    ("color NOT IN ('green', 'blue')", true),
    ("color NOT IN ('red')", false),
    ("missing IN ('red')", false),
    ("missing NOT IN ('red')", false),
    ("name IN ('O''Brien')", true),
    ("JMSType IN ('order', 'invoice')", true),
    // LIKE and ESCAPE
    ("color LIKE 'r%'", true),
    ("color LIKE 'r_d'", true),
    ("color LIKE 'r_'", false),
    ("color LIKE '%e%'", true),
    ("color LIKE '%'", true),
    ("color LIKE 'R%'", false),
    ("color NOT LIKE 'b%'", true),
    ("color LIKE 'red%'", true),
    ("color LIKE '_%_%_'", true),
    ("color LIKE '____'", false),
    ("empty LIKE '%'", true),
    ("empty LIKE '_'", false),
    ("code LIKE 'a\\_b\\%c' ESCAPE '\\'", true),
    ("code LIKE 'a!_b!%c' ESCAPE '!'", true),
    ("code LIKE 'a!_%' ESCAPE '!'", true),
    ("word LIKE 'a!_%' ESCAPE '!'", false),
    ("word LIKE 'a_c'", true),
    ("code LIKE '%!%%' ESCAPE '!'", true),
    ("word LIKE '%!%%' ESCAPE '!'", false),
    ("name LIKE 'O''%'", true),
    ("missing LIKE '%'", false),
    ("missing NOT LIKE '%'", false),
    ("JMSPriority LIKE '7'", false),
    // IS NULL and three-valued logic
    ("missing IS NULL", true),
    ("missing IS NOT NULL", false),
    ("color IS NULL", false),
    ("color IS NOT NULL", true),
    ("empty IS NULL", false),
    ("missing = 'x'", false),
    ("NOT (missing = 'x')", false),
    ("missing <> 'x'", false),
    ("missing > 1", false),
    ("missing + 1 > 0", false),
    ("missing = 'x' OR TRUE", true),
    ("missing = 'x' OR FALSE", false),
    ("NOT (missing = 'x' OR FALSE)", false),
    ("missing = 'x' AND FALSE", false),
    ("NOT (missing = 'x' AND FALSE)", true),
    ("NOT (missing = 'x' AND TRUE)", false),
    ("missing", false),
    ("NOT missing", false),
    // the JMS headers
    ("JMSDeliveryMode = 'PERSISTENT'", true),
    ("JMSDeliveryMode = 'NON_PERSISTENT'", false),
    ("JMSType = 'order'", true),
    ("JMSCorrelationID = 'c-1'", true),
    ("JMSMessageID = 'ID:p-1:42'", true),
    ("JMSMessageID LIKE 'ID:p-1:%'", true),
    ("jmspriority IS NULL", true),
    // keywords are case-insensitive, identifiers are not
    ("color = 'red' and not size <> 10", true),
    ("color In ('red') oR FaLsE", true),
];

#[test]
fn the_conformance_table_holds() {
    let m = msg();
    let mut wrong = Vec::new();
    for (text, want) in TABLE {
        match Selector::parse(text) {
            Ok(s) if s.matches(&m) == *want => {}
            Ok(_) => wrong.push(format!(
                "{text:?} should {}match",
                if *want { "" } else { "not " }
            )),
            Err(e) => wrong.push(format!("{text:?} does not parse: {e}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn unset_jms_headers_are_null() {
    let m = bare();
    for (text, want) in [
        ("JMSType IS NULL", true),
        ("JMSCorrelationID IS NULL", true),
        ("JMSMessageID IS NULL", true),
        ("JMSType = 'order'", false),
        ("NOT (JMSType = 'order')", false),
        ("JMSDeliveryMode = 'NON_PERSISTENT'", true),
        ("JMSPriority = 4 AND JMSTimestamp = 5", true),
    ] {
        assert_eq!(Selector::parse(text).unwrap().matches(&m), want, "{text}");
    }
}

/// (selector, 1-based position of the error, a piece of what the error says was expected).
const ERRORS: &[(&str, usize, &str)] = &[
    ("", 1, "an identifier, a literal, NOT or '('"),
    ("   ", 4, "an identifier"),
    ("color =", 8, "an identifier"),
    (
        "color = 'red",
        13,
        "the ' closing the string that starts at character 9",
    ),
    ("color == 'red'", 8, "an identifier"),
    ("color != 'red'", 7, "'<>' is SQL's not-equal"),
    ("color = \"red\"", 9, "single quotes"),
    ("(a = 1", 7, "')'"),
    ("a = 1)", 6, "AND, OR, a comparison or the end"),
    ("a = 1 b = 2", 7, "AND, OR"),
    ("a BETWEEN 1 OR 2", 13, "AND (BETWEEN low AND high)"),
    ("a BETWEEN 'x' AND 'y'", 11, "a number"),
    ("a IN 'x'", 6, "'('"),
    ("a IN ()", 7, "a string"),
    ("a IN ('x' 'y')", 11, "',' or ')'"),
    ("a IN (1, 2)", 7, "a string"),
    ("a LIKE b", 8, "a string pattern"),
    ("a LIKE 'x' ESCAPE 'ab'", 19, "exactly one character"),
    (
        "a LIKE 'x!' ESCAPE '!'",
        8,
        "a character after the ESCAPE character",
    ),
    ("a IS 'x'", 6, "NULL"),
    ("a NOT = 1", 7, "BETWEEN, IN or LIKE after NOT"),
    ("a > 'x'", 5, "a number"),
    ("'x' < a", 1, "a number"),
    ("a > TRUE", 5, "a number"),
    ("a + 'x' = 1", 5, "a number"),
    ("-'x' = 1", 2, "a number"),
    ("1 AND a", 1, "a condition"),
    ("a AND 'x'", 7, "a condition"),
    ("NOT 3", 5, "a condition"),
    ("3", 1, "a condition"),
    ("'x'", 1, "a condition"),
    ("a + 1", 1, "a condition"),
    ("a = 9223372036854775808", 5, "an integer from"),
    ("a = 99999999999999999999", 5, "an integer from"),
    ("a = 09", 5, "octal"),
    ("a = 1e", 7, "the digits of an exponent"),
    ("a = 12abc", 7, "an operator or a space after a number"),
    ("a = 0x", 5, "a number"),
    ("a = 1 AND", 10, "an identifier"),
    ("AND a = 1", 1, "an identifier"),
    ("a = #", 5, "an identifier, a literal, an operator"),
    ("a = 1 OR OR b = 2", 10, "an identifier"),
];

#[test]
fn parse_errors_name_the_position_and_what_was_expected() {
    let mut wrong = Vec::new();
    for (text, position, expected) in ERRORS {
        match Selector::parse(text) {
            Ok(_) => wrong.push(format!("{text:?} parsed")),
            Err(e) if e.position != *position || !e.expected.contains(expected) => wrong.push(
                format!("{text:?}: got \"{e}\", want position {position} expecting {expected:?}"),
            ),
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_error_message_reads_well() {
    let e = Selector::parse("color = 'red' AND size >").unwrap_err();
    assert_eq!(
        e.to_string(),
        "at character 25: expected an identifier, a literal, NOT or '(', found the end of the selector"
    );
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = format!("{}a = 1{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(Selector::parse(&deep)
        .unwrap_err()
        .expected
        .contains("levels deep"));
    let nots = format!("{}a", "NOT ".repeat(10_000));
    assert!(Selector::parse(&nots).is_err());
    let signs = format!("{}1 = 1", "- ".repeat(10_000));
    assert!(Selector::parse(&signs).is_err());
    let sum = format!("a = 1{}", " + 1".repeat(10_000));
    assert!(Selector::parse(&sum).is_err());
    // Long chains of AND / OR are one level, and fine.
    let ors = (0..10_000)
        .map(|i| format!("a = '{i}'"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let s = Selector::parse(&ors).unwrap();
    assert!(!s.matches(&msg()));
    let just_inside = format!("{}a = 1{}", "(".repeat(60), ")".repeat(60));
    assert!(Selector::parse(&just_inside).is_ok());
}

#[test]
fn a_hostile_like_pattern_costs_little() {
    struct Long(String);
    impl MessageView for Long {
        fn header(&self, _: &str) -> Option<&str> {
            Some(&self.0)
        }
        fn priority(&self) -> u8 {
            4
        }
        fn timestamp_ms(&self) -> u64 {
            0
        }
        fn persistent(&self) -> bool {
            false
        }
        fn jms_type(&self) -> Option<&str> {
            None
        }
        fn correlation_id(&self) -> Option<&str> {
            None
        }
        fn message_id(&self) -> Option<String> {
            None
        }
    }
    let value = Long("a".repeat(10_000));
    let s = Selector::parse(&format!("v LIKE '{}b'", "%a".repeat(200))).unwrap();
    assert!(!s.matches(&value));
}

/// Text built from the selector language's own pieces, so random cases reach deep into the
/// parser rather than failing at the first character.
fn selectorish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("a".to_string()),
        Just("JMSPriority".to_string()),
        Just("color".to_string()),
        Just("'x'".to_string()),
        Just("''''".to_string()),
        Just("'%_!'".to_string()),
        Just("1".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("2.5E3".to_string()),
        Just("0x1F".to_string()),
        Just("07".to_string()),
        Just("TRUE".to_string()),
        Just("NULL".to_string()),
        Just("AND".to_string()),
        Just("OR".to_string()),
        Just("NOT".to_string()),
        Just("BETWEEN".to_string()),
        Just("IN".to_string()),
        Just("LIKE".to_string()),
        Just("ESCAPE".to_string()),
        Just("IS".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just(",".to_string()),
        Just("=".to_string()),
        Just("<>".to_string()),
        Just("<".to_string()),
        Just(">=".to_string()),
        Just("+".to_string()),
        Just("-".to_string()),
        Just("*".to_string()),
        Just("/".to_string()),
        "[ -~]{0,3}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    #[test]
    fn no_text_makes_the_parser_or_evaluator_panic(text in selectorish()) {
        if let Ok(s) = Selector::parse(&text) {
            let _ = s.matches(&msg());
            let _ = s.matches(&bare());
        }
    }

    #[test]
    fn no_unicode_text_makes_the_parser_panic(text in "\\PC{0,64}") {
        if let Ok(s) = Selector::parse(&text) {
            let _ = s.matches(&msg());
        }
    }

    /// An error always points inside the text (or just past its end).
    #[test]
    fn error_positions_are_inside_the_text(text in selectorish()) {
        if let Err(e) = Selector::parse(&text) {
            prop_assert!(e.position >= 1 && e.position <= text.chars().count() + 1,
                "{text:?}: {e}");
        }
    }
}
