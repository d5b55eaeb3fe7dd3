//! A sweep's session: the one way every front end (`run`, `status`, the Slurm submitter and
//! its workers, `reproduce`) opens a sweep.
//!
//! 1. [`Session::open`]: the hubs the spec talks to — the embedded hub started in-process when
//!    the spec uses `local://` (with the bundled models imported into it on first use), and a
//!    client for the output repo.
//! 2. [`Session::pin`] (or [`Session::pin_recorded`] for `reproduce`), once: the data held to
//!    the ledger's commit, every model revision pinned, the plan built, the output's ledger
//!    read, and the device class decided by [`DeviceClass::of`].
//! 3. From that [`PinnedSweep`]: [`Session::run`] (all of it, a work unit, or chosen nodes),
//!    or a front end's own reading (status counts, a submission, a comparison).
//! 4. [`Session::close`] stops the embedded hub.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{
    FailurePolicy, RunError, RunEvent, RunEvents, RunReport, RunSettings, UnitSelection,
    budget_permits, check_pending_module_patterns, hold_data_to_ledger, manifest, models,
    output_repo, pin_and_plan, records, steps,
};
use super::{PinnedModel, Sources};
use crate::analysis::Spectrum;
use crate::hub::server::{Server, ServerConfig, ServerHandle};
use crate::hub::{HubClient, Repo};
use crate::ledger::{self, LedgerState};
use crate::model::{DeviceSpec, HubSource};
use crate::plan::{NodeKind, Plan};
use crate::sink::{Committable, FinalIndex, Sink, SinkEvent, SinkEvents, SinkSettings};
use crate::spec::{DataSource, HubKind, ModelInstance, ModelSource, OutputRepo, SweepSpec};

/// Where a session's hubs are (the CLI builds this from the environment).
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The Hub for `hf://` outputs and `repo: NS/NAME` models (`HF_ENDPOINT`, `HF_TOKEN`, the
    /// HF cache).
    pub hf: HubSource,
    /// `HUBSWEEP_HOME`: the embedded hub's store is `hub/` in it, and what is downloaded from
    /// that hub is cached in `cache/` (the HF cache layout has no endpoint in it, so the two
    /// hubs must not share one).
    pub home: PathBuf,
}

/// Whether a session has the embedded hub.
pub enum Embedded {
    /// Started when the spec uses a `local://` repo (output, model or data).
    IfUsed,
    /// This one, already running (`reproduce` reads the source ledger from it before the spec
    /// is known, then reruns into a scratch repo there).
    Running(EmbeddedHub),
}

/// The embedded hub, served in-process over `HUBSWEEP_HOME/hub` on a free port.
pub struct EmbeddedHub {
    handle: ServerHandle,
    client: HubClient,
}

impl EmbeddedHub {
    /// Starts it over `home/hub`; its client offers the `xet` transfer if `xet`.
    pub async fn start(home: &std::path::Path, xet: bool) -> Result<Self, RunError> {
        let store = home.join("hub");
        let mut config = ServerConfig::new(store.clone());
        config.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let handle = Server::start(config)
            .await
            .map_err(|source| RunError::EmbeddedHub {
                store,
                source: Box::new(source),
            })?;
        let client = HubClient::builder(handle.base_url())
            .and_then(|b| b.xet(xet).build())
            .map_err(|source| RunError::Endpoint {
                endpoint: handle.base_url().to_owned(),
                source,
            })?;
        Ok(Self { handle, client })
    }

    /// A client of it.
    pub fn client(&self) -> &HubClient {
        &self.client
    }

    /// Where it answers (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> &str {
        self.handle.base_url()
    }

    /// Stops it.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
    }
}

/// The device class of a sweep: part of every capture id, so it is decided once, by one rule
/// ([`DeviceClass::of`]), when the sweep is pinned, and the run opens its device from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClass {
    /// The CPU.
    Cpu,
    /// A CUDA device.
    Cuda,
}

impl DeviceClass {
    /// The rule: `cpu` is the CPU and `cuda:N` is CUDA whatever the binary was built with (a
    /// CUDA device that is not there is an error when the run opens it); `auto` is CUDA only
    /// when `cuda_usable` says a CUDA device can be opened (see [`cuda_usable`]).
    pub fn of(device: crate::spec::DeviceSpec, cuda_usable: impl FnOnce() -> bool) -> Self {
        match device {
            crate::spec::DeviceSpec::Cpu => Self::Cpu,
            crate::spec::DeviceSpec::Cuda(_) => Self::Cuda,
            crate::spec::DeviceSpec::Auto if cuda_usable() => Self::Cuda,
            crate::spec::DeviceSpec::Auto => Self::Cpu,
        }
    }

    /// Parses `cpu` or `cuda` (as ledgers record it).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cpu" => Some(Self::Cpu),
            "cuda" => Some(Self::Cuda),
            _ => None,
        }
    }

    /// `cpu` or `cuda`, as node ids and ledgers spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }

    /// The device a run of this class opens for a spec that asks for `device`.
    pub fn device(self, device: crate::spec::DeviceSpec) -> DeviceSpec {
        match (self, device) {
            (Self::Cpu, _) => DeviceSpec::Cpu,
            (Self::Cuda, crate::spec::DeviceSpec::Cuda(n)) => DeviceSpec::Cuda(n as usize),
            (Self::Cuda, _) => DeviceSpec::Cuda(0),
        }
    }
}

/// Whether this binary can open a CUDA device (built with the `cuda` feature and a device
/// there): what `auto` asks.
pub fn cuda_usable() -> bool {
    cfg!(feature = "cuda") && DeviceSpec::Auto.open().is_ok_and(|d| d.is_cuda())
}

/// An open sweep: see the module docs.
pub struct Session {
    spec: SweepSpec,
    output: HubClient,
    sources: Sources,
    local: Option<EmbeddedHub>,
}

/// A sweep pinned once: everything a run, a status, a submission or a comparison reads.
pub struct PinnedSweep {
    /// The pinned plan: every node has its id.
    pub plan: Plan,
    /// The pinned models, in plan order.
    pub models: Vec<(ModelInstance, PinnedModel)>,
    /// The output repo's ledger as read right after pinning (empty from
    /// [`Session::pin_recorded`], which does not read the output).
    pub state: LedgerState,
    /// The device class every capture id was made for.
    pub device: DeviceClass,
    /// Whether [`PinnedSweep::state`] is the output repo's.
    state_is_output: bool,
}

impl Session {
    /// Opens `spec`'s hubs: starts the embedded hub when [`Embedded`] says so, imports the
    /// bundled models the spec names into it, and makes the output repo's client. Relative
    /// paths in the spec are read from `spec_dir`.
    pub async fn open(
        spec: SweepSpec,
        hubs: &HubSettings,
        spec_dir: PathBuf,
        embedded: Embedded,
    ) -> Result<Self, RunError> {
        let local = match embedded {
            Embedded::Running(hub) => Some(hub),
            Embedded::IfUsed if uses_local(&spec) => {
                Some(EmbeddedHub::start(&hubs.home, hubs.hf.xet).await?)
            }
            Embedded::IfUsed => None,
        };
        if let Some(hub) = &local {
            import_bundled(&spec, hub.client()).await?;
        }
        let output = match (spec.output.hub, &local) {
            (HubKind::Local, Some(hub)) => hub.client.clone(),
            (HubKind::Local, None) => return Err(RunError::NoLocalHub),
            (HubKind::Hf, _) => hf_client(&hubs.hf)?,
        };
        let sources = Sources {
            hf: hubs.hf.clone(),
            local: local.as_ref().map(|hub| HubSource {
                endpoint: hub.handle.base_url().to_owned(),
                token: None,
                cache_dir: hubs.home.join("cache"),
                offline: false,
                xet: hubs.hf.xet,
            }),
            spec_dir,
            pinned: BTreeMap::new(),
            pinned_data: None,
        };
        Ok(Self {
            spec,
            output,
            sources,
            local,
        })
    }

    /// The sweep.
    pub fn spec(&self) -> &SweepSpec {
        &self.spec
    }

    /// The output repo's client.
    pub fn output_client(&self) -> &HubClient {
        &self.output
    }

    /// The embedded hub's client, when it runs.
    pub fn local_client(&self) -> Option<&HubClient> {
        self.local.as_ref().map(EmbeddedHub::client)
    }

    /// The output repo.
    pub fn output_repo(&self) -> Result<Repo, RunError> {
        output_repo(&self.spec)
    }

    /// Points the session at another output repo in the embedded hub (`reproduce` reruns into
    /// a scratch repo; no node id depends on the output).
    pub fn retarget(&mut self, output: OutputRepo) -> Result<(), RunError> {
        let Some(hub) = &self.local else {
            return Err(RunError::NoLocalHub);
        };
        if output.hub != HubKind::Local {
            return Err(RunError::NoLocalHub);
        }
        self.output = hub.client.clone();
        self.spec.output = output;
        Ok(())
    }

    /// The output repo's ledger as it is now.
    pub async fn read_ledger(&self) -> Result<LedgerState, RunError> {
        let repo = self.output_repo()?;
        LedgerState::read(&self.output, &repo, "main")
            .await
            .map_err(|source| RunError::Ledger {
                repo: self.spec.output.to_string(),
                source,
            })
    }

    /// Pins the sweep once: the spec's Hub data file held to the commit the output's ledger
    /// records, every model revision pinned for the device class [`DeviceClass::of`] gives,
    /// the plan built, then the output's ledger read.
    pub async fn pin(&self, events: &RunEvents) -> Result<PinnedSweep, RunError> {
        let device = DeviceClass::of(self.spec.compute.device, cuda_usable);
        let sources = hold_data_to_ledger(&self.spec, &self.sources, &self.output).await?;
        let (plan, models) = pin_and_plan(&self.spec, &sources, device.as_str(), events).await?;
        let state = self.read_ledger().await?;
        Ok(PinnedSweep {
            plan,
            models,
            state,
            device,
            state_is_output: true,
        })
    }

    /// Pins the sweep as a ledger recorded it (`reproduce`): models at the commits of
    /// `models` (by `source@revision`), the Hub data file at `data`, for the recorded
    /// `device` class. The pinned sweep's state is empty: the output is not read.
    pub async fn pin_recorded(
        &self,
        models: BTreeMap<String, String>,
        data: Option<String>,
        device: DeviceClass,
        events: &RunEvents,
    ) -> Result<PinnedSweep, RunError> {
        let mut sources = self.sources.clone();
        sources.pinned = models;
        sources.pinned_data = data;
        let (plan, models) = pin_and_plan(&self.spec, &sources, device.as_str(), events).await?;
        Ok(PinnedSweep {
            plan,
            models,
            state: LedgerState::default(),
            device,
            state_is_output: false,
        })
    }

    /// Stops the embedded hub, if this session started one.
    pub async fn close(self) {
        if let Some(hub) = self.local {
            hub.shutdown().await;
        }
    }

    /// Runs the selected work of a pinned sweep: every node the ledger does not have, a Slurm
    /// work unit, or chosen nodes ([`UnitSelection`]), through one sink into the output repo.
    /// See the [module docs of `exec`](super).
    ///
    /// Longer than most functions: it is the run's outline — check, create, plan against the
    /// ledger, start the sink, the models' turns, the final step, finish the sink — and each
    /// step reads the ones before it.
    pub async fn run(
        &self,
        pinned: PinnedSweep,
        settings: &RunSettings,
        selection: &UnitSelection,
        events: RunEvents,
        cancel: CancellationToken,
    ) -> Result<RunReport, RunError> {
        let run_started = Instant::now();
        let spec = &self.spec;
        let client = &self.output;
        let repo = self.output_repo()?;
        let repo_name = spec.output.to_string();
        let device = pinned
            .device
            .device(spec.compute.device)
            .open()
            .map_err(|source| RunError::Model {
                label: "device".into(),
                source: Box::new(source),
            })?;
        let PinnedSweep {
            plan,
            models: pinned_models,
            state: pinned_state,
            state_is_output,
            ..
        } = pinned;
        // A weight sweep's module patterns are checked (downloading checkpoints) before
        // anything is written, but only while weight spectra are still to run.
        if spec.weights.is_some() {
            let early = if state_is_output {
                pinned_state
            } else {
                self.read_ledger().await?
            };
            check_pending_module_patterns(spec, &plan, &pinned_models, &early, selection, &events)
                .await?;
        }
        if !settings.dry_run {
            client
                .create_repo(&repo, false, true)
                .await
                .map_err(|source| RunError::Hub {
                    repo: repo_name.clone(),
                    source,
                })?;
        }
        // Read again as late as possible, so concurrent writers see each other's records.
        let state = self.read_ledger().await?;
        let mut report = RunReport {
            nodes: plan.nodes.len(),
            output: repo_name.clone(),
            pinned: pinned_models
                .iter()
                .map(|(i, p)| (format!("{}@{}", i.source, i.revision), p.commit.clone()))
                .chain(
                    plan.adapters
                        .iter()
                        .filter_map(|a| Some((a.label(), a.commit.clone()?))),
                )
                .collect(),
            ..RunReport::default()
        };
        let id = |i: usize| plan.nodes[i].id.map(|id| id.to_hex()).unwrap_or_default();
        let in_ledger: HashSet<usize> = (0..plan.nodes.len())
            .filter(|&i| state.is_done(&id(i)))
            .collect();
        report.skipped = in_ledger.len();
        // Nodes outside a node selection are treated as done: the steps below skip them
        // exactly as they skip what the ledger has.
        let done: HashSet<usize> = (0..plan.nodes.len())
            .filter(|&i| in_ledger.contains(&i) || selection.excludes(&id(i)))
            .collect();
        let pending_bytes = records::pending_artifact_bytes(spec, &plan, &pinned_models, &done);
        events(&RunEvent::Planned {
            nodes: plan.nodes.len(),
            done: done.len(),
            pending_bytes,
        });
        report.sink.head = state.head.clone();
        if settings.dry_run || done.len() == plan.nodes.len() || selection.all_done(&plan, &done) {
            return Ok(report);
        }

        let sink_events: SinkEvents = {
            let events = events.clone();
            Arc::new(move |e: &SinkEvent| events(&RunEvent::Sink(e.clone())))
        };
        let sink_settings = SinkSettings {
            client: client.clone(),
            repo: repo.clone(),
            revision: "main".into(),
            upload_slots: settings.upload_slots,
            commits: settings.commits.clone(),
        };
        let (sink, senders) = Sink::start(&sink_settings, &state, sink_events);

        // The manifest goes in with the first records.
        let ours = manifest(spec, &settings.spec_file.0, &settings.spec_file.1);
        let manifest_file = (state.manifest.as_ref() != Some(&ours)).then(|| {
            (
                ledger::MANIFEST_PATH.to_owned(),
                Bytes::from(serde_json::to_vec_pretty(&ours).unwrap_or_default()),
            )
        });

        let budget = Arc::new(Semaphore::new(budget_permits(spec.limits.memory) as usize));
        let mut spectra: HashMap<usize, Arc<Spectrum>> = HashMap::new();
        let run = steps::Run {
            spec,
            settings,
            client,
            plan: &plan,
            pinned: &pinned_models,
            done: &done,
            selection,
            device: &device,
            budget: &budget,
            uploads: &senders.uploads,
            commits: &senders.records,
            events: &events,
            cancel: &cancel,
        };
        let failed_models =
            models::run_models(&run, &mut report, &mut spectra, manifest_file).await;
        if selection.has_final()
            && !report.interrupted
            && (report.failed.is_empty() || settings.failure == FailurePolicy::KeepGoing)
        {
            let blocked = steps::blocked_final_nodes(&plan, &done, &failed_models, selection);
            report.executed +=
                steps::run_overlaps(&run, &blocked, &state, &repo, &mut spectra).await?;
            if let Some(last) = plan.nodes.len().checked_sub(1).filter(|l| {
                !done.contains(l)
                    && !blocked.contains(l)
                    && plan.nodes[*l].kind == NodeKind::LedgerCommit
            }) {
                let record = records::record(&plan, &plan.nodes[last], None);
                let _ = senders
                    .records
                    .send(Committable {
                        record,
                        regular: Vec::new(),
                    })
                    .await;
                report.executed += 1;
            }
            report.blocked = blocked
                .iter()
                .map(|&i| plan.label(&plan.nodes[i]))
                .collect();
        }
        // Units leave the index to the final step (one commit, not one per unit).
        let index = selection.has_final().then_some(FinalIndex {
            plan: &plan,
            manifest: &ours,
            before: &state,
        });
        let finished = sink
            .finish(senders, index)
            .await
            .map_err(|source| RunError::Sink {
                repo: repo_name.clone(),
                source,
            })?;
        if finished.card_left_alone {
            events(&RunEvent::CardLeftAlone);
        }
        let totals = finished.totals;
        for stranded in &totals.stranded {
            let label = plan
                .nodes
                .iter()
                .find(|n| n.id.is_some_and(|id| id.to_hex() == *stranded))
                .map_or_else(|| stranded.clone(), |n| plan.label(n));
            report.failed.push((
                label,
                "not committed: an input of it was never committed".into(),
            ));
        }
        report.sink = totals;
        report.wall_seconds = run_started.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// Whether the spec uses the embedded hub (output, a model or the data on `local://`).
fn uses_local(spec: &SweepSpec) -> bool {
    spec.output.hub == HubKind::Local
        || spec.models.iter().any(|g| {
            g.repo.starts_with("local://")
                || g.adapter
                    .as_ref()
                    .is_some_and(|a| a.repo.starts_with("local://"))
        })
        || matches!(
            spec.data.source,
            DataSource::HubFile {
                hub: HubKind::Local,
                ..
            }
        )
}

/// A client of the Hub `hf` names, with its token.
pub fn hf_client(hf: &HubSource) -> Result<HubClient, RunError> {
    HubClient::builder(&hf.endpoint)
        .map(|b| b.token(hf.token.clone()).offline(hf.offline).xet(hf.xet))
        .and_then(|b| b.build())
        .map_err(|source| RunError::Endpoint {
            endpoint: hf.endpoint.clone(),
            source,
        })
}

/// Imports the bundled models the spec names into the embedded hub (the quickstart's tiny
/// models ship inside the binary).
async fn import_bundled(spec: &SweepSpec, client: &HubClient) -> Result<(), RunError> {
    for group in &spec.models {
        for instance in crate::spec::expand_group(group, &mut Vec::new()) {
            if let ModelSource::Local(id) = &instance.source {
                crate::hub::bundled::ensure(client, id)
                    .await
                    .map_err(|source| RunError::Bundled {
                        model: id.clone(),
                        source,
                    })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::DeviceClass;
    use crate::spec::DeviceSpec;

    /// One rule for every front end: a `device: cpu` sweep is CPU even where CUDA is usable
    /// (a CUDA build on a GPU machine), without asking; `auto` asks; `cuda:N` is CUDA.
    #[test]
    fn the_device_class_follows_the_spec_then_the_machine() {
        let asked = std::cell::Cell::new(0);
        let usable = || {
            asked.set(asked.get() + 1);
            true
        };
        assert_eq!(DeviceClass::of(DeviceSpec::Cpu, usable), DeviceClass::Cpu);
        assert_eq!(asked.get(), 0, "`device: cpu` must not probe for CUDA");
        assert_eq!(DeviceClass::of(DeviceSpec::Auto, usable), DeviceClass::Cuda);
        assert_eq!(
            DeviceClass::of(DeviceSpec::Auto, || false),
            DeviceClass::Cpu
        );
        assert_eq!(
            DeviceClass::of(DeviceSpec::Cuda(1), || false),
            DeviceClass::Cuda
        );
        assert_eq!(
            DeviceClass::Cuda.device(DeviceSpec::Cuda(1)),
            crate::model::DeviceSpec::Cuda(1)
        );
        assert_eq!(
            DeviceClass::Cpu.device(DeviceSpec::Auto),
            crate::model::DeviceSpec::Cpu
        );
        // And a binary without the `cuda` feature never finds CUDA usable.
        if !cfg!(feature = "cuda") {
            assert!(!super::cuda_usable());
        }
    }
}
