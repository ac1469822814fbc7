//! The harness's S3 server: starts, answers with its default bucket, stops on drop
//! (the missing-moto failure is a unit test in `src/s3.rs`).

use std::net::TcpStream;

use klio_harness::s3::{S3Server, DEFAULT_BUCKET};

#[test]
fn s3_server_starts_with_a_bucket_and_stops_on_drop() {
    let server = S3Server::start().unwrap();
    assert!(server.object_keys(DEFAULT_BUCKET).unwrap().is_empty());
    assert!(server.multipart_uploads(DEFAULT_BUCKET).unwrap().is_empty());
    server.create_bucket("second").unwrap();
    assert!(server.object_keys("second").unwrap().is_empty());
    assert!(server.object_keys("never-created").is_err());
    let port = server.port();
    drop(server);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "moto still answers after drop"
    );
}
