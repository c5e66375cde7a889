//! Does podman-api's inspect model read Podman 5's answer? Feeds it a real
//! Podman 4.3 inspect body as is, and with Podman 5's changed fields.
fn main() {
    for path in std::env::args().skip(1) {
        let body = std::fs::read(&path).expect("read");
        let r = serde_json::from_slice::<podman_api::models::ContainerInspectResponseLibpod>(&body);
        match r {
            Ok(_) => println!("{path}: ok"),
            Err(e) => println!("{path}: {e}"),
        }
    }
}
