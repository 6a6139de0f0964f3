//! The `scribed` binary: thin subcommands over the library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use scribed::audio::load_mono_16k;
use scribed::backend::cpu::Cpu;
use scribed::backend::cuda::arena::ArenaConfig;
use scribed::backend::cuda::{resolve_device, ArenaSizer, CudaBackend, DeviceChoice, Resolved};
use scribed::backend::{Backend, BackendError};
use scribed::decode::{DecodeOptions, Task, Transcriber};
use scribed::engine::{Engine, WhisperEngine};
use scribed::model::{LoadOptions, Whisper};
use scribed::render::{render, Format};

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
    /// Run the daemon: Deepgram-compatible live transcription at /v1/listen.
    Serve(ServeArgs),
    /// Stream an audio file to a daemon as a live client would.
    Stream(StreamArgs),
    /// Dictate: stream the microphone to a daemon, print the text.
    Mic(MicArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the bound address is
    /// printed on stdout). Default 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<String>,
    /// CTranslate2 Whisper model directory (default: $SCRIBED_MODEL, else models/tiny.en).
    #[arg(long, env = "SCRIBED_MODEL")]
    model: Option<PathBuf>,
    /// TOML configuration file; flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Concurrent sessions; more get HTTP 503 with Retry-After.
    #[arg(long)]
    max_sessions: Option<usize>,
    /// Accepted API key (repeatable, or comma-separated in
    /// $SCRIBED_API_KEYS). Without any, no key is required. Prefer
    /// --api-key-file: flags are visible in the process list.
    #[arg(long = "api-key", env = "SCRIBED_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    api_keys: Vec<String>,
    /// File of API keys, one per line (e.g. systemd's LoadCredential=);
    /// re-read on SIGHUP.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where the model runs: the GPU when a usable one is found (auto), or
    /// the CPU, or the GPU or an error (cuda).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Which GPU, for --device auto|cuda.
    #[arg(long, default_value_t = 0)]
    gpu: usize,
}

#[derive(Args)]
struct StreamArgs {
    file: PathBuf,
    /// Pace relative to real time (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Frame length in milliseconds (20–100).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(20..=100))]
    frame_ms: u32,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct MicArgs {
    /// Input device name (default: the system's default input).
    #[arg(long)]
    device: Option<String>,
    /// List the input devices and exit.
    #[arg(long)]
    list: bool,
    /// Stop after this many seconds of audio (default: until Ctrl-C).
    #[arg(long)]
    seconds: Option<f64>,
    #[command(flatten)]
    client: ClientArgs,
}

/// What `stream` and `mic` share: the daemon to talk to and how to print.
#[derive(Args)]
struct ClientArgs {
    /// Daemon base URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Show interim results.
    #[arg(long)]
    interim: bool,
    /// Print the raw JSON messages, one per line.
    #[arg(long, conflicts_with = "lines")]
    json: bool,
    /// Print final text only, one line per utterance, flushed as soon as the
    /// utterance ends: for pipes and key bindings (`scribed mic --lines | …`).
    #[arg(long, conflicts_with = "interim")]
    lines: bool,
    #[arg(long, env = "SCRIBED_API_KEY")]
    api_key: Option<String>,
    /// Extra query parameters for /v1/listen (k=v&k2=v2).
    #[arg(long, default_value = "")]
    query: String,
}

impl ClientArgs {
    fn printing(&self) -> Printing {
        match (self.json, self.lines) {
            (true, _) => Printing::Json,
            (_, true) => Printing::Lines,
            _ => Printing::Captions,
        }
    }

    fn options(self, speed: f64, frame_ms: u32) -> scribed::client::stream::StreamOptions {
        scribed::client::stream::StreamOptions {
            url: self.url,
            speed,
            interim: self.interim,
            api_key: self.api_key,
            frame_ms,
            extra_query: self.query,
        }
    }
}

#[derive(Args)]
struct ModelArgs {
    /// CTranslate2 Whisper model directory.
    #[arg(long, env = "SCRIBED_MODEL", default_value = "models/tiny.en")]
    model: PathBuf,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where the model runs: the GPU when a usable one is found (auto), or
    /// the CPU, or the GPU or an error (cuda).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Which GPU, for --device auto|cuda.
    #[arg(long, default_value_t = 0)]
    gpu: usize,
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
    /// On the CPU, the encoder's linear layers in int8: faster where the CPU
    /// has AVX-512 VNNI; the text may differ a little from float32's.
    #[arg(long)]
    int8_encoder: bool,
    #[command(flatten)]
    model: ModelArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs one line per session start and end by default.
    let default_filter = match cli.command {
        Command::Serve(_) => "info,symphonia_core=off,symphonia=off",
        _ => "warn,symphonia_core=off,symphonia=off",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person: journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into()),
        )
        .init();
    let result = match cli.command {
        Command::Transcribe(args) => transcribe(args),
        Command::Serve(args) => serve(args),
        Command::Stream(args) => stream(args),
        Command::Mic(args) => mic(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scribed: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, without the repeats that appear
/// when a library's message already quotes its source (tungstenite's
/// "IO error: Connection refused" over the io::Error itself).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global().context("starting the compute threads")
}

fn transcribe(args: TranscribeArgs) -> anyhow::Result<ExitCode> {
    let device = choose_device(args.model.device, args.model.gpu)?;
    init_threads(args.model.threads)?;
    let dir = args.model.model.clone();
    let loaded = loading(&dir);
    match device {
        Resolved::Cpu { .. } => {
            let options = LoadOptions { int8_encoder: args.int8_encoder };
            transcribe_on(&Whisper::load_with(&dir, Cpu, options).map_err(loaded)?, &args)
        }
        Resolved::Cuda(info) => transcribe_on(&cuda_model(&dir, info.index, 1, None).map_err(loaded)?, &args),
    }
}

/// Says which model directory a load error is about.
fn loading(dir: &std::path::Path) -> impl Fn(scribed::model::ModelError) -> anyhow::Error + '_ {
    move |e| anyhow::Error::new(e).context(format!("loading the model from {}", dir.display()))
}

/// The model on GPU `gpu`, its arena sized (by a dry run of the model's own
/// load) for `sessions` streams at once, given back after `idle_release`
/// with none.
fn cuda_model(
    dir: &std::path::Path,
    gpu: usize,
    sessions: usize,
    idle_release: Option<std::time::Duration>,
) -> Result<Whisper<CudaBackend>, scribed::model::ModelError> {
    let config = ArenaConfig { max_sessions: sessions, idle_release, ..ArenaConfig::default() };
    Whisper::load_measured(dir, ArenaSizer::default(), config.max_seqs, |dims, sizer| {
        CudaBackend::new(gpu, dims, &sizer.footprint(), config).map_err(|e| BackendError::Device(e.to_string()))
    })
}

fn transcribe_on<B: Backend>(model: &Whisper<B>, args: &TranscribeArgs) -> anyhow::Result<ExitCode> {
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
    let mut transcriber = Transcriber::new(model, opts.max_seqs())?;
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
        let duration = scribed::audio::seconds(audio.len() as u64);
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

/// Resolves `--device`/`--gpu`: `cuda` says why a GPU cannot be used (no
/// driver, no device, no NVRTC or cuBLAS), `auto` falls back to the CPU with
/// that reason logged.
fn choose_device(choice: DeviceChoice, gpu: usize) -> anyhow::Result<Resolved> {
    resolve_device(choice, gpu).context("--device cuda")
}

/// The model on the chosen device, as the daemon's engine. With `auto`, a
/// GPU whose backend cannot start (the arena does not fit, a kernel does
/// not compile) falls back to the CPU, saying why.
fn load_engine(
    config: &scribed::config::Config,
    device: Resolved,
    choice: DeviceChoice,
) -> anyhow::Result<std::sync::Arc<dyn Engine>> {
    let dir = &config.model;
    let loaded = loading(dir);
    if let Resolved::Cuda(info) = device {
        match cuda_model(dir, info.index, config.max_sessions, config.idle_release) {
            Ok(model) => return Ok(std::sync::Arc::new(WhisperEngine::new(model))),
            Err(e) if choice == DeviceChoice::Auto => {
                tracing::warn!("device auto: {info} could not run the model ({e}); using the CPU");
            }
            Err(e) => return Err(loaded(e)),
        }
    }
    let options = LoadOptions { int8_encoder: config.int8_encoder };
    Ok(std::sync::Arc::new(WhisperEngine::new(Whisper::load_with(dir, Cpu, options).map_err(loaded)?)))
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

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let flags = scribed::config::Overrides {
        listen: args.listen,
        model: args.model,
        max_sessions: args.max_sessions,
        api_keys: args.api_keys,
        api_key_file: args.api_key_file,
        threads: args.threads,
    };
    let load = move || scribed::config::Config::load(args.config.as_deref(), flags.clone(), "models/tiny.en".into());
    let mut config = load()?;
    config.fault_injection = std::env::var_os("SCRIBED_FAULT_INJECTION").is_some();
    let device = choose_device(args.device, args.gpu)?;
    init_threads(config.threads)?;
    let engine = load_engine(&config, device, args.device)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("scribed-net")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, model = %config.model.display(), max_sessions = config.max_sessions, keys = config.api_keys.len(), int8_encoder = config.int8_encoder, "listening");
        // Scripts and tests read the bound address (port 0 picks one) here.
        println!("listening on {addr}");
        std::io::stdout().flush()?;
        let failed = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
        let until = {
            let (engine, failed) = (engine.clone(), failed.clone());
            async move {
                tokio::select! {
                    _ = shutdown_signal() => {}
                    e = device_failure(engine) => {
                        tracing::error!("{e}: no session can be served on this device any more; stopping");
                        let _ = failed.set(e);
                    }
                }
            }
        };
        let (shared, stop) = scribed::server::Shared::new(engine, config);
        tokio::spawn(reload_on_sighup(shared.clone(), load));
        scribed::server::run(listener, shared, stop, until).await;
        if let Some(e) = failed.get() {
            anyhow::bail!("the compute device failed: {e}");
        }
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP re-reads the configuration and applies what can change while
/// running (API keys, allowed origins); a bad file keeps the running settings.
/// Never exits: the default action of SIGHUP would kill the daemon.
async fn reload_on_sighup(
    shared: std::sync::Arc<scribed::server::Shared>,
    load: impl Fn() -> Result<scribed::config::Config, scribed::config::ConfigError>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; configuration reload is unavailable");
            return;
        };
        while hup.recv().await.is_some() {
            match load() {
                Ok(config) => {
                    let changed = shared.reload(&config);
                    let access = shared.access();
                    tracing::info!(
                        changed,
                        keys = access.api_keys.len(),
                        origins = access.allowed_origins.len(),
                        "SIGHUP: reloaded API keys and allowed origins (other settings need a restart)"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "SIGHUP: configuration not reloaded; the running settings stay"),
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// Resolves on SIGINT or SIGTERM.
/// Resolves with the engine's fatal error once it has one (a lost CUDA
/// context): the daemon then stops, and its supervisor restarts it.
async fn device_failure(engine: std::sync::Arc<dyn Engine>) -> String {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if let Some(e) = engine.fatal_error() {
            return e;
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn stream(args: StreamArgs) -> anyhow::Result<ExitCode> {
    let samples = load_mono_16k(&args.file)?;
    let mut printer = Captions::new(args.client.printing());
    let opts = args.client.options(args.speed, args.frame_ms);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(scribed::client::stream::stream_samples(&samples, &opts, |msg, raw| printer.show(msg, raw)))?;
    Ok(ExitCode::SUCCESS)
}

fn mic(args: MicArgs) -> anyhow::Result<ExitCode> {
    use scribed::client::mic;
    if args.list {
        for name in mic::list_devices()? {
            println!("{name}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(s) = args.seconds {
        anyhow::ensure!(s.is_finite() && s > 0.0, "--seconds must be a positive number of seconds");
    }
    let mut microphone = mic::Microphone::open(args.device.as_deref())?;
    eprintln!("scribed: listening on {} ({} Hz); Ctrl-C to stop", microphone.name, microphone.sample_rate);
    let mut printer = Captions::new(args.client.printing());
    let opts = args.client.options(1.0, 50);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    runtime.block_on(microphone.dictate(&opts, args.seconds, stop, |msg, raw| printer.show(msg, raw)))?;
    let lost = microphone.dropped_seconds();
    if lost > 0.0 {
        eprintln!("scribed: {lost:.2} s of microphone audio were dropped (the connection could not keep up)");
    }
    Ok(ExitCode::SUCCESS)
}

/// How `stream` and `mic` print what the daemon sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Printing {
    /// Finals as they come, the interim tail in place on a terminal (dimmed).
    Captions,
    /// One line per utterance, final text only.
    Lines,
    /// Every raw JSON message.
    Json,
}

/// Prints a daemon's results as `Printing` says; summaries and errors go to
/// stderr, so stdout holds only text.
struct Captions {
    printing: Printing,
    tty: bool,
    interim_shown: bool,
    /// `Lines`: the final text of the utterance so far.
    utterance: String,
}

impl Captions {
    fn new(printing: Printing) -> Captions {
        Captions { printing, tty: std::io::stdout().is_terminal(), interim_shown: false, utterance: String::new() }
    }

    fn show(&mut self, msg: &scribed::protocol::ServerMessage, raw: &str) {
        use scribed::protocol::ServerMessage;
        let mut out = std::io::stdout().lock();
        match (self.printing, msg) {
            (Printing::Json, _) => {
                let _ = writeln!(out, "{raw}");
            }
            (Printing::Lines, ServerMessage::Results { is_final: true, speech_final, from_finalize, .. }) => {
                self.add_to_utterance(msg.transcript().unwrap_or(""));
                if *speech_final || *from_finalize {
                    self.end_utterance(&mut out);
                }
            }
            (Printing::Captions, ServerMessage::Results { is_final, .. }) => {
                let text = msg.transcript().unwrap_or("");
                if *is_final {
                    self.clear_interim(&mut out);
                    if !text.is_empty() {
                        let _ = writeln!(out, "{text}");
                    }
                } else if self.tty {
                    let _ = write!(out, "\r\x1b[2K\x1b[2m{text}\x1b[0m");
                    self.interim_shown = true;
                } else {
                    let _ = writeln!(out, "… {text}");
                }
            }
            (_, ServerMessage::Metadata { duration, lag_seconds, words, .. }) => {
                self.clear_interim(&mut out);
                self.end_utterance(&mut out);
                eprintln!("scribed: {duration:.1} s of audio, {words} words, worst lag {lag_seconds:.2} s");
            }
            (_, ServerMessage::Error { description, .. }) => eprintln!("scribed: server: {description}"),
            _ => {}
        }
        let _ = out.flush();
    }

    fn add_to_utterance(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if !self.utterance.is_empty() {
            self.utterance.push(' ');
        }
        self.utterance.push_str(text);
    }

    fn end_utterance(&mut self, out: &mut std::io::StdoutLock) {
        if !self.utterance.is_empty() {
            let _ = writeln!(out, "{}", self.utterance);
            self.utterance.clear();
        }
    }

    fn clear_interim(&mut self, out: &mut std::io::StdoutLock) {
        if self.interim_shown && self.tty {
            let _ = write!(out, "\r\x1b[2K");
        }
        self.interim_shown = false;
    }
}
