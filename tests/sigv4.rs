//! SigV4 signing of OpenSearch requests (Amazon OpenSearch Service), with
//! credentials from the standard AWS provider chain (here its first link,
//! the environment). No local server speaks SigV4, so a listener on
//! loopback written for this test takes the request and answers like a node
//! would; the test asserts what a signing client must send. It is a binary
//! of its own because it sets process environment variables.

use std::io::{Read, Write};
use std::net::TcpListener;

use rebuilder::config::{AwsSigV4Settings, OpenSearchSettings};
use rebuilder::search::SearchClient;

/// Accepts one connection, returns the request head it read, answers 200
/// with a node's version document.
fn one_request(listener: TcpListener) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("a connection");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if socket.read(&mut byte).unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let body = r#"{"version":{"number":"2.19.6"}}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(answer.as_bytes());
        String::from_utf8_lossy(&head).to_lowercase()
    })
}

#[tokio::test]
async fn requests_are_signed_with_sigv4_for_the_configured_region_and_service() {
    // SAFETY of the environment: this binary holds this one test.
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE");
    std::env::set_var(
        "AWS_SECRET_ACCESS_KEY",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    );
    std::env::remove_var("AWS_SESSION_TOKEN");
    std::env::remove_var("AWS_PROFILE");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = one_request(listener);
    let settings = OpenSearchSettings {
        url: format!("http://127.0.0.1:{port}"),
        aws_sigv4: Some(AwsSigV4Settings {
            region: "eu-west-2".into(),
            service: "es".into(),
        }),
        request_timeout_secs: 10,
        ..OpenSearchSettings::default()
    };
    assert!(
        SearchClient::new(&settings).is_err(),
        "a SigV4 client needs the provider chain (connect)"
    );
    let client = SearchClient::connect(&settings)
        .await
        .expect("a signing client");
    assert_eq!(client.version().await.unwrap(), "2.19.6");
    let head = seen.join().unwrap();
    assert!(
        head.contains("authorization: aws4-hmac-sha256 credential=akidexample/"),
        "{head}"
    );
    assert!(head.contains("/eu-west-2/es/aws4_request"), "{head}");
    assert!(head.contains("x-amz-date:"), "{head}");
    assert!(
        !head.contains("wjalrxutnfemi"),
        "the secret key is never sent"
    );
}
