//! The `postern` binary: parse arguments, load and check configuration
//! (exit 64 on bad config, before binding anything), then serve.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use postern::app::App;
use postern::config::{Config, DEFAULT_FILE};

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "SSH bastion for temporary, approved, recorded production access"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create host key, user CA, target identity key and postern.toml (never overwrites).
    Init {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run the bastion.
    Serve {
        #[arg(long, default_value = DEFAULT_FILE)]
        config: PathBuf,
    },
    /// Run a verb on the running bastion through its control socket.
    Ctl {
        #[arg(long, default_value = DEFAULT_FILE)]
        config: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
}

/// sysexits: configuration error.
const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    // Logs go to stderr; POSTERN_LOG sets the filter (default info) and
    // POSTERN_LOG_FORMAT=json gives one JSON object per line.
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("POSTERN_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Init { dir } => match postern::app::init(&dir) {
            Ok(made) => {
                for m in made {
                    println!("created {}", dir.join(m).display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("postern: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => serve(config),
        Command::Ctl { config, args } => ctl(config, args),
    }
}

/// Load the configuration, or say why and give the exit status.
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("postern: {e}");
        ExitCode::from(EX_CONFIG)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("postern: cannot start runtime: {e}");
            ExitCode::FAILURE
        })
}

fn serve(config: PathBuf) -> ExitCode {
    let config = match load_config(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let app = match App::open(config) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    match postern::sessions::mark_interrupted(&app) {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            sessions = n,
            "marked sessions cut off by the last stop as interrupted"
        ),
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(app.config.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("postern: cannot listen on {}: {e}", app.config.listen);
                return ExitCode::FAILURE;
            }
        };
        let socket = match postern::socket::bind(&app.config.control_socket) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "postern: control socket {}: {e}",
                    app.config.control_socket.display()
                );
                return ExitCode::FAILURE;
            }
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if postern::recording::UNRECORDED {
            tracing::warn!("built with bench-recording-off: session bytes are NOT recorded");
            eprintln!(
                "postern: WARNING: built with bench-recording-off: session bytes are NOT recorded"
            );
        }
        tracing::info!(%addr, "postern listening");
        println!("postern listening on {addr}");
        tokio::spawn(postern::socket::serve(app.clone(), socket));
        if let Some(addr) = app.config.metrics_listen {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "metrics listening");
                    tokio::spawn(postern::metrics::serve(app.clone(), l));
                }
                // Metrics are not worth refusing to serve users over.
                Err(e) => tracing::warn!(%addr, "metrics listener not started: {e}"),
            }
        }
        // Both signal handlers are in place before systemd hears READY=1: a
        // SIGHUP that came earlier would otherwise end the process.
        use tokio::signal::unix::{signal, SignalKind};
        let (mut hup, mut term) = match (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(h), Ok(t)) => (h, t),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("postern: cannot handle signals: {e}");
                return ExitCode::FAILURE;
            }
        };
        let status = format!("listening on {addr}");
        let reload_app = app.clone();
        let reload_status = status.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                postern::notify::reloading();
                let outcome = match reload_app.reload_policy() {
                    Ok(n) => {
                        tracing::info!(roles = n, "policy reloaded");
                        format!("policy reloaded ({n} roles)")
                    }
                    Err(e) => {
                        tracing::warn!("policy reload failed, keeping the old policy: {e}");
                        "policy reload failed, old policy kept (see the log)".to_string()
                    }
                };
                postern::notify::ready(&format!("{reload_status}; {outcome}"));
            }
        });
        postern::notify::ready(&status);
        tokio::select! {
            r = postern::server::run(app.clone(), listener) => {
                if let Err(e) = r {
                    eprintln!("postern: {e}");
                    return ExitCode::FAILURE;
                }
            }
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        }
        postern::notify::stopping();
        let _ = std::fs::remove_file(&app.config.control_socket);
        ExitCode::SUCCESS
    })
}

fn ctl(config: PathBuf, args: Vec<String>) -> ExitCode {
    let config = match load_config(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(postern::socket::call(&config.control_socket, &args)) {
        Ok(reply) => {
            print!("{}", reply.stdout);
            eprint!("{}", reply.stderr);
            ExitCode::from(u8::try_from(reply.status).unwrap_or(1))
        }
        Err(e) => {
            eprintln!(
                "postern: cannot reach the server on {}: {e} (is `postern serve` running?)",
                config.control_socket.display()
            );
            ExitCode::FAILURE
        }
    }
}
