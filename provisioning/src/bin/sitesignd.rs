//! `sitesignd --config FILE`: the signing service. Its code is `sitesign::service` in the
//! appliance crate; the binary is built here, beside the CLI, so that one package ships both.

fn main() -> std::process::ExitCode {
    sitesign::service::main()
}
