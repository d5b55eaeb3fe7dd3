//! The one integration-test binary (one link on a 2-core machine). Each module tests one
//! capability through the front door: the `hubsweep` binary or the public library API.

mod adapters;
mod analysis;
mod card;
mod common;
mod emit;
mod emit_latex;
mod emit_spectrum;
mod families;
mod homes;
mod hub;
mod logging;
mod lora_study;
mod model;
mod offline;
mod plan;
mod plan_scale;
mod pool;
mod reference;
mod report_chromium;
mod reproduce;
mod reproduce_pins;
mod run;
mod sink;
mod slurm;
mod slurm_follow;
mod spec;
mod spectro;
mod spectro_smollm2;
mod verify;
mod xet_run;
