//! The `scribed` binary: thin subcommands over the library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use scribed::audio::decode::load_mono_16k;
use scribed::backend::cpu::Cpu;
use scribed::decode::{DecodeOptions, Task, Transcriber};
use scribed::model::Whisper;
use scribed::transcribe::{render, Format};

#[derive(Parser)]
#[command(name = "scribed", version, about = "Streaming speech transcription with Whisper")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Transcribe audio files (WAV, FLAC, MP3, Ogg/Vorbis) to stdout.
    Transcribe(TranscribeArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// CTranslate2 Whisper model directory.
    #[arg(long, env = "SCRIBED_MODEL", default_value = "models/tiny.en")]
    model: PathBuf,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct TranscribeArgs {
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Beam width (1 = greedy).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=16))]
    beam: u16,
    /// Candidates sampled per fallback temperature.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=16))]
    best_of: u16,
    /// Language code or name (multilingual models detect it when absent).
    #[arg(long)]
    language: Option<String>,
    /// Translate to English instead of transcribing (multilingual models).
    #[arg(long)]
    translate: bool,
    /// Per-word start and end times (JSON `words`).
    #[arg(long)]
    word_timestamps: bool,
    /// Text that conditions the first window (names, spellings, style).
    #[arg(long)]
    initial_prompt: Option<String>,
    /// Decode at temperature 0 only (no fallback on failed windows).
    #[arg(long)]
    no_fallback: bool,
    /// Decode every window, even those without detected speech (as faster-whisper does).
    #[arg(long)]
    no_vad: bool,
    #[command(flatten)]
    model: ModelArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,symphonia_core=off,symphonia=off".into()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Transcribe(args) => transcribe(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scribed: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().context("starting the compute threads")
}

fn transcribe(args: TranscribeArgs) -> anyhow::Result<ExitCode> {
    init_threads(args.model.threads)?;
    let model = Whisper::load(&args.model.model, Cpu).context("loading the model")?;
    let opts = DecodeOptions {
        beam_size: args.beam as usize,
        best_of: args.best_of as usize,
        language: args.language.clone(),
        task: if args.translate { Task::Translate } else { Task::Transcribe },
        word_timestamps: args.word_timestamps,
        initial_prompt: args.initial_prompt.clone(),
        vad: !args.no_vad,
        temperatures: if args.no_fallback { vec![0.0] } else { DecodeOptions::default().temperatures },
        ..DecodeOptions::default()
    };
    let mut transcriber = Transcriber::new(&model, opts.max_seqs())?;
    let mut failed = 0;
    let stdout = std::io::stdout();
    for file in &args.files {
        let audio = match load_mono_16k(file) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("scribed: {e}");
                failed += 1;
                continue;
            }
        };
        let duration = audio.len() as f64 / 16_000.0;
        let bar = progress_bar(duration);
        let mut on_progress = |done: f64| {
            if let Some(b) = &bar {
                b.set_position((done * 10.0) as u64);
            }
        };
        let transcript = match transcriber.transcribe(&audio, &opts, &mut on_progress) {
            Ok(t) => t,
            Err(e) => {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                eprintln!("scribed: {}: {e}", file.display());
                failed += 1;
                continue;
            }
        };
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let mut out = stdout.lock();
        out.write_all(render(&transcript, file, args.format).as_bytes())?;
        out.flush()?;
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// A progress bar on stderr for long files, only when a person watches.
fn progress_bar(seconds: f64) -> Option<indicatif::ProgressBar> {
    if seconds < 30.0 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new((seconds * 10.0) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}% {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}
