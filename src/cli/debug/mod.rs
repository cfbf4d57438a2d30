//! `vadapt debug ...`: fixed interfaces that read and write safetensors, for parity tests.

mod compose;
mod edges;
mod forward;
mod latent;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sobel edges of every `<name>.rgb` (U8, HxWx3) tensor -> `<name>.gray/.gx/.gy/.mag` (F32, HxW).
    Edges(edges::Args),
    /// One UNet forward: reads `sample`, `timestep`, `encoder_hidden_states`; writes `output`.
    Forward(forward::Args),
    /// A composed sampling run (Video Adapter / CFG-Mix / inverse); writes `x0` and `xs`.
    Compose(compose::Args),
    /// The VAE and CLIP text encoder on the parity fixtures' inputs; writes their outputs.
    Latent(latent::Args),
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Edges(a) => edges::run(a),
        Command::Forward(a) => forward::run(a),
        Command::Compose(a) => compose::run(a),
        Command::Latent(a) => latent::run(a),
    }
}
