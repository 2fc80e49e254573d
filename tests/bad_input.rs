//! The bad-input matrix, at the parsers (no server needed): every row of
//! the README's "Reliability" table for sync records, GMC doctors (as the
//! read and the change streams see them) and configuration gets the
//! reason the table gives, or is accepted by the rule it gives. The
//! run-level half, that none of them crashes a run or loses another
//! record, is `tests/run.rs`
//! (`every_class_of_bad_sync_message_is_counted_and_loses_no_other_record`).

use bson::doc;
use rebuilder::config::Settings;
use rebuilder::domain::{parse_tcs_message, parse_tcs_message_within, GmcDoctor, TcsMessage};
use rebuilder_dev::datagen::DatasetSpec;

/// The reason as the sync and the update queue give it (with the default
/// `rabbitmq.max_message_bytes`).
fn reason(body: &[u8]) -> String {
    let limit = Settings::default().rabbitmq.max_message_bytes;
    match parse_tcs_message_within(body, limit) {
        Ok(TcsMessage::Record(n, _)) => format!("record {}", n.as_str()),
        Ok(TcsMessage::SyncEnd) => "syncEnd".into(),
        Err(e) => e.as_str().to_string(),
    }
}

#[test]
fn every_rejected_class_of_sync_message_gets_its_reason() {
    for (body, expected) in DatasetSpec::bad_input_matrix() {
        let got = reason(&body);
        assert_eq!(
            got,
            expected,
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
    }
}

#[test]
fn accepted_oddities_follow_their_rules() {
    // Unknown fields are ignored; the record stands.
    assert_eq!(
        reason(br#"{"gmcReferenceNumber": "7100001", "favouriteColour": "green", "nested": {"a": [1, 2]}}"#),
        "record 7100001"
    );
    // A GMC number sent as a JSON number is read as its digits.
    assert_eq!(
        reason(br#"{"gmcReferenceNumber": 7100002}"#),
        "record 7100002"
    );
    // Blanks around a number are trimmed.
    assert_eq!(
        reason(br#"{"gmcReferenceNumber": "  7100003 "}"#),
        "record 7100003"
    );
    // A date in another format is kept as text; precedence ranks it as no date.
    let Ok(TcsMessage::Record(_, record)) = parse_tcs_message(
        br#"{"gmcReferenceNumber": "7100004", "programmeMembershipStartDate": "31/12/2024"}"#,
    ) else {
        panic!("a record with an odd date is accepted")
    };
    assert_eq!(
        record.programme_membership_start_date.as_deref(),
        Some("31/12/2024")
    );
    let dated = parse_tcs_message(
        br#"{"gmcReferenceNumber": "7100004", "programmeMembershipStartDate": "2024-12-31"}"#,
    );
    let Ok(TcsMessage::Record(_, dated)) = dated else {
        panic!()
    };
    assert!(dated.precedence() > record.precedence());
    // syncEnd ends the stream whatever else the message holds.
    assert_eq!(
        reason(br#"{"syncEnd": true, "gmcReferenceNumber": "x y"}"#),
        "syncEnd"
    );
}

#[test]
fn padded_gmc_numbers_keep_their_text_and_are_told_apart_from_blanks() {
    // The number is the document id as sent (trimmed): "0012345" and
    // "12345" are two ids; the run's numeric-id rules join them to GMC.
    assert_eq!(
        reason(br#"{"gmcReferenceNumber": "0012345"}"#),
        "record 0012345"
    );
    assert_eq!(
        reason(br#"{"gmcReferenceNumber": ""}"#),
        "missing_gmc_number"
    );
    assert_eq!(
        reason(br#"{"gmcReferenceNumber": null}"#),
        "missing_gmc_number"
    );
    assert_eq!(
        reason(br#"{"gmcReferenceNumber": "UNKNOWN"}"#),
        "unusable_gmc_number"
    );
    assert_eq!(
        reason(br#"{"gmcReferenceNumber": "12 345"}"#),
        "unusable_gmc_number"
    );
}

#[test]
fn gmc_doctors_without_a_usable_number_are_refused_with_a_reason() {
    for (document, expected) in [
        (
            doc! {"doctorFirstName": "No", "doctorLastName": "Id"},
            "missing",
        ),
        (doc! {"_id": "   ", "doctorFirstName": "Blank"}, "missing"),
        (doc! {"_id": "UNKNOWN"}, "placeholder"),
    ] {
        let error = GmcDoctor::from_document(&document)
            .err()
            .unwrap_or_else(|| panic!("{document} was accepted"));
        assert!(
            error.to_string().to_lowercase().contains(expected),
            "{document}: {error}"
        );
    }
    let (number, doctor) = GmcDoctor::from_document(&doc! {
        "_id": "7200001",
        "doctorFirstName": "Ok",
        "somethingNew": {"deep": [1, 2, 3]},
        "submissionDate": "not a date",
    })
    .expect("unknown fields and odd dates are accepted");
    assert_eq!(number.as_str(), "7200001");
    assert_eq!(doctor.doctor_first_name.as_deref(), Some("Ok"));
}

/// Spoils one setting.
type Spoil = fn(&mut Settings);

#[test]
fn bad_configuration_names_the_key() {
    let cases: [(&str, Spoil); 6] = [
        ("bulk.concurrency", |s| s.bulk.concurrency = 0),
        ("names.master_family", |s| {
            s.names.master_family = "*".into()
        }),
        ("names.prefix", |s| s.names.prefix = "../".into()),
        ("gates.max_body_loss", |s| s.gates.max_body_loss = 1.5),
        ("rabbitmq.uri", |s| {
            s.rabbitmq.uri = rebuilder::config::Secret::new("http://x")
        }),
        ("schedule.cron", |s| s.schedule.cron = "every night".into()),
    ];
    for (key, spoil) in cases {
        let mut settings = Settings::default();
        spoil(&mut settings);
        let error = settings
            .validate()
            .expect_err(&format!("{key} passed validation"));
        assert!(error.to_string().contains(key), "{key}: {error}");
    }
}
