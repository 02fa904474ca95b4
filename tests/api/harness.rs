//! The black-box tests as one program: every file's tests run through [`libtest_mimic`], so a
//! test whose tool is missing is reported `ignored`, with the tool and how to install it,
//! instead of passing without having run. Under `CI` nothing is ignored for a missing tool:
//! `.ci/run` installs them all, and a test that cannot find one fails.

use std::future::Future;
use std::process::Command;

use libtest_mimic::{Failed, Trial};

/// A program a test needs beside the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// The separate Kafka-compatible broker (`.ci/install-tansu`).
    Tansu,
    /// The fleet's shared dedupe index.
    Redis,
    /// The CloudEvents Python SDK that reads messages independently (`.ci/install-cloudevents`).
    CloudEventsSdk,
}

impl Tool {
    /// What is missing (short, for the test's line), or `None` when the tool is there.
    fn missing(self) -> Option<&'static str> {
        let present = match self {
            Tool::Tansu => crate::common::tansu::tansu_binary().is_some(),
            Tool::Redis => Command::new("redis-server")
                .arg("--version")
                .output()
                .is_ok(),
            Tool::CloudEventsSdk => crate::cloudevents::cloudevents_root()
                .join("bin/python")
                .exists(),
        };
        let why = match self {
            Tool::Tansu => "needs tansu",
            Tool::Redis => "needs redis-server",
            Tool::CloudEventsSdk => "needs the CloudEvents SDK",
        };
        (!present).then_some(why)
    }

    /// How to install it.
    fn how(self) -> &'static str {
        match self {
            Tool::Tansu => "run .ci/install-tansu",
            Tool::Redis => "apt-get install redis-server",
            Tool::CloudEventsSdk => "run .ci/install-cloudevents",
        }
    }
}

/// One test: its name, how it runs, and what it needs.
pub struct Test {
    name: &'static str,
    run: Box<dyn FnOnce() + Send>,
    needs: Vec<Tool>,
    ignored: Option<&'static str>,
}

impl Test {
    /// An async test on a runtime of two worker threads (what the bridge runs on in tests).
    pub fn tokio<F, Fut>(name: &'static str, test: F) -> Test
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let run = move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a test runtime")
                .block_on(test())
        };
        Test::sync(name, run)
    }

    pub fn sync(name: &'static str, test: impl FnOnce() + Send + 'static) -> Test {
        Test {
            name,
            run: Box::new(test),
            needs: Vec::new(),
            ignored: None,
        }
    }

    pub fn needs(mut self, tool: Tool) -> Test {
        self.needs.push(tool);
        self
    }

    /// Never run unless asked for (`-- --ignored`), for `reason`.
    pub fn ignored(mut self, reason: &'static str) -> Test {
        self.ignored = Some(reason);
        self
    }

    /// The trial of this test in module `module`; `in_ci`: a missing tool is a failure.
    fn trial(self, module: &str, in_ci: bool) -> Trial {
        let missing = match in_ci {
            true => None,
            false => self.needs.iter().find_map(|t| t.missing()),
        };
        let reason = missing.or(self.ignored);
        let run = self.run;
        let trial = Trial::test(format!("{module}::{}", self.name), move || {
            run();
            Ok::<(), Failed>(())
        });
        match reason {
            Some(why) => trial.with_ignored_flag(true).with_kind(why),
            None => trial,
        }
    }
}

/// Runs `modules`' tests as the command line asks (filters, `--ignored`, `--test-threads`),
/// then exits with the result.
pub fn run(modules: Vec<(&str, Vec<Test>)>) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    let in_ci = std::env::var_os("CI").is_some();
    for tool in [Tool::Tansu, Tool::Redis, Tool::CloudEventsSdk] {
        if let (Some(why), false) = (tool.missing(), in_ci) {
            eprintln!("tests that {why} are reported ignored: {}", tool.how());
        }
    }
    let trials: Vec<Trial> = modules
        .into_iter()
        .flat_map(|(module, tests)| tests.into_iter().map(move |t| t.trial(module, in_ci)))
        .collect();
    libtest_mimic::run(&args, trials).exit()
}
