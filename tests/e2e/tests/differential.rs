//! The differential table (`src/scenarios.rs`): every scenario under runc and
//! under runvm, compared. `RUNVM_SCENARIOS=name,name` runs a subset.

use runvm_e2e::*;

#[e2e_test]
fn every_scenario_as_under_runc() {
    differential::run_table(&scenarios::scenarios(), differential::Engine::Docker);
}
