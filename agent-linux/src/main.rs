//! `iot-agent`: the device agent. Not implemented yet (issue 3).

fn main() -> std::process::ExitCode {
    eprintln!("iot-agent: not implemented yet; the device agent lands with issue 3");
    std::process::ExitCode::FAILURE
}
