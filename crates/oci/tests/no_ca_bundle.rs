//! A system without CA certificates (a minimal image without ca-certificates) gets a clear error
//! naming the registry and the cause, not a panic in the HTTP client's set-up. Its own test binary:
//! the test changes the process's environment before any other thread runs.

use slipway_oci::NetOptions;
use slipway_oci::registry::Registry;
use slipway_oci::resolve::parse_reference;

#[test]
fn no_ca_bundle_is_a_clear_error_not_a_panic() {
    let empty = tempfile::tempdir().unwrap();
    // SAFETY: this binary's only test, run before any thread of its own reads the environment.
    unsafe {
        std::env::set_var("SSL_CERT_FILE", empty.path().join("none.pem"));
        std::env::set_var("SSL_CERT_DIR", empty.path());
    }
    let reference = parse_reference("10.0.2.2:5000/slipway/busybox:1").unwrap();
    let insecure = ["10.0.2.2:5000".to_string()];
    let err = match Registry::new(&reference, &insecure, &NetOptions::default()) {
        Ok(_) => panic!("a client was built without any CA certificate"),
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("10.0.2.2:5000")
            && err.contains("No CA certificates")
            && err.contains("ca-certificates"),
        "{err}"
    );
}
