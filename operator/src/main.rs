//! `iot-operator`: the Kubernetes operator. Not implemented yet (issue 4).

fn main() -> std::process::ExitCode {
    eprintln!("iot-operator: not implemented yet; the operator lands with issue 4");
    std::process::ExitCode::FAILURE
}
