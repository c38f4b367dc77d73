//! Generates the Rust code for `proto/*.proto` with a vendored `protoc`, so a
//! fresh machine needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let protos = [
        "proto/gatehouse/events.proto",
        "proto/gatehouse/state.proto",
        "proto/gatehouse/raft.proto",
        "proto/gatehouse/control.proto",
        "proto/gatehouse/front.proto",
        "proto/gatehouse/admin.proto",
    ];
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("gatehouse_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        // Malformed requests are INVALID_ARGUMENT without decoder detail.
        .codec_path("crate::codec::StrictCodec")
        // Messages carrying a password, a session token or a credential:
        // their `Debug` (in `secret_debug.rs`) never shows it.
        .skip_debug([
            ".gatehouse.front.v1.LoginRequest",
            ".gatehouse.front.v1.LoginResponse",
            ".gatehouse.front.v1.LogoutRequest",
            ".gatehouse.front.v1.RevokeOwnSessionRequest",
            ".gatehouse.front.v1.LinkRequest",
            ".gatehouse.front.v1.SpendLinkRequest",
            ".gatehouse.front.v1.CreateOwnKeyRequest",
            ".gatehouse.front.v1.CreateOwnKeyResponse",
            ".gatehouse.front.v1.RevokeOwnKeyRequest",
            ".gatehouse.front.v1.ChangeOwnPasswordRequest",
            ".gatehouse.front.v1.StartUpstreamResponse",
            ".gatehouse.front.v1.FinishUpstreamRequest",
            // Second factors: codes, passwords, tickets, secrets, recovery codes.
            ".gatehouse.front.v1.PresentFactorRequest",
            ".gatehouse.front.v1.OwnFactorRequest",
            ".gatehouse.front.v1.TotpOffer",
            ".gatehouse.front.v1.RecoveryCodesResponse",
            ".gatehouse.front.v1.EnrolledResponse",
            ".gatehouse.admin.v1.EnrollTicket",
            // A credential, and the token minted for it.
            ".gatehouse.front.v1.MintTokenRequest",
            ".gatehouse.front.v1.MintTokenResponse",
        ])
        // Commands print as JSON in `gatehouse admin watch --json`.
        .type_attribute(".gatehouse.events.v1", "#[derive(serde::Serialize)]")
        .type_attribute(".gatehouse.events.v1", "#[serde(rename_all = \"snake_case\")]")
        .compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
