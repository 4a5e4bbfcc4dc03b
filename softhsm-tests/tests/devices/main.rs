//! Integration tests against real devices: a fresh SoftHSM2 token or a fresh swtpm per test, each
//! test in its own process (see the `device_tests` harness). Signatures are checked with `ring`
//! and `openssl`; keys also with raw cryptoki and with tpm2-tools, outside sitesign's code.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a panic is a failure")]

mod conformance;
mod kat;
mod pkcs11;
mod tpm;

use std::process::ExitCode;

use device_tests::{Body, Helper, Test};

/// A JWS signing input, the kind of bytes sitesign signs.
pub const MESSAGE: &[u8] = b"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0";

macro_rules! tests {
    ($($kind:ident $module:ident::$name:ident),* $(,)?) => {
        &[$(Test { name: stringify!($name), body: Body::$kind($module::$name) }),*]
    };
}

const TESTS: &[Test] = tests![
    // The conformance suite: every backend.
    Both conformance::generated_keys_report_the_required_protection,
    Both conformance::public_keys_export_and_signatures_verify_independently,
    Both conformance::keys_are_found_by_uri,
    Both conformance::existing_key_names_are_refused,
    Both conformance::a_wrong_secret_fails_closed_with_a_clear_error,
    Both conformance::concurrent_callers_all_get_valid_signatures,
    Both conformance::a_device_restart_is_survived_without_reopening,
    Both conformance::x509_certificates_signed_in_the_device_verify_with_openssl,
    Both conformance::every_signature_is_checked_on_the_host_and_ecdsa_is_low_s,
    // PKCS#11 on SoftHSM2.
    SoftHsm pkcs11::generated_keys_have_exactly_the_required_protection,
    SoftHsm pkcs11::private_key_material_cannot_be_read,
    SoftHsm pkcs11::rsa_3072_and_4096_keys_sign_and_verify,
    SoftHsm pkcs11::wrong_pin_gives_a_clear_error,
    SoftHsm pkcs11::pin_file_problems_give_clear_errors,
    SoftHsm pkcs11::unknown_token_and_module_give_clear_errors,
    SoftHsm pkcs11::survives_token_reinitialised_while_open,
    SoftHsm pkcs11::survives_being_logged_out_behind_its_back,
    SoftHsm pkcs11::a_second_lane_has_sessions_of_its_own_and_recovers_with_the_first,
    SoftHsm kat::rfc7520_signature_is_reproduced_by_an_imported_key,
    // TPM 2.0 on swtpm.
    Swtpm tpm::wrapped_keys_load_and_sign_with_tpm2_tools,
    Swtpm tpm::persistent_handle_keys_are_used_by_uri,
    Swtpm tpm::many_keys_share_the_few_transient_slots,
    Swtpm tpm::a_tpm_reset_reloads_keys_and_is_counted,
    Swtpm tpm::a_tpm_reset_without_startup_is_started_and_recovered,
    Swtpm tpm::an_unreachable_tpm_gives_a_clear_error_quickly,
    Swtpm tpm::a_key_blob_swapped_for_another_is_refused_every_time_never_cached,
];

const HELPERS: &[Helper] = &[Helper { name: "recreate-token-with-new-key", run: pkcs11::recreate_token_with_new_key }];

fn main() -> ExitCode {
    device_tests::main(TESTS, HELPERS)
}
