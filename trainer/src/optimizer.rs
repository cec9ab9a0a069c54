//! Adam and SGD with momentum over the trainable parameters, computed like libtorch's own, with every
//! state tensor exposed so a live rank can hand it to a joining one (broadcast) or to a checkpoint.
use tch::Tensor;

use crate::config::OptimizerChoice;
use crate::error::TrainError;

/// Adam's first-moment decay.
pub const ADAM_BETA1: f64 = 0.9;
/// Adam's second-moment decay.
pub const ADAM_BETA2: f64 = 0.999;
/// Adam's denominator term.
pub const ADAM_EPSILON: f64 = 1e-8;
/// SGD's momentum (no dampening, no Nesterov).
pub const SGD_MOMENTUM: f64 = 0.9;

/// Prefix of the optimizer's tensors in a training-state file: `optimizer.<state>.<parameter>`.
pub const STATE_TENSOR_PREFIX: &str = "optimizer.";

/// An optimizer over named parameters. State tensors exist from construction on (zeros), so their
/// layout is fixed: for each state kind ([`Optimizer::state_kinds`]), one tensor per parameter in
/// parameter order.
#[derive(Debug)]
pub struct Optimizer {
    choice: OptimizerChoice,
    learning_rate: f64,
    weight_decay: f64,
    /// Names and shallow clones (same storage) of the parameters updated.
    parameters: Vec<(String, Tensor)>,
    /// `state_kinds().len() * parameters.len()` tensors, kind-major.
    state: Vec<Tensor>,
    /// Steps applied (Adam's `t`; SGD's momentum buffer starts at the gradient on step 1).
    step_count: u64,
}

impl Optimizer {
    /// An optimizer at step 0 over `parameters` (in the order given; the trainer sorts them by name).
    pub fn new(
        choice: OptimizerChoice,
        parameters: Vec<(String, Tensor)>,
        learning_rate: f64,
        weight_decay: f64,
    ) -> Result<Self, TrainError> {
        let kinds = Self::kinds_of(choice);
        let mut state = Vec::with_capacity(kinds.len() * parameters.len());
        for _ in kinds {
            for (_, parameter) in &parameters {
                state.push(tch::no_grad(|| parameter.f_zeros_like())?);
            }
        }
        Ok(Optimizer {
            choice,
            learning_rate,
            weight_decay,
            parameters,
            state,
            step_count: 0,
        })
    }

    fn kinds_of(choice: OptimizerChoice) -> &'static [&'static str] {
        match choice {
            OptimizerChoice::Adam => &["exp_avg", "exp_avg_sq"],
            OptimizerChoice::SgdMomentum => &["momentum_buffer"],
        }
    }

    /// Which optimizer this is.
    pub fn choice(&self) -> OptimizerChoice {
        self.choice
    }

    /// The names of the per-parameter state kinds, in layout order (PyTorch's names).
    pub fn state_kinds(&self) -> &'static [&'static str] {
        Self::kinds_of(self.choice)
    }

    pub fn learning_rate(&self) -> f64 {
        self.learning_rate
    }

    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.learning_rate = learning_rate;
    }

    /// Optimizer steps applied so far.
    pub fn step_count(&self) -> u64 {
        self.step_count
    }

    /// Restores the step counter (with the state tensors, from a live rank or a checkpoint).
    pub fn set_step_count(&mut self, step_count: u64) {
        self.step_count = step_count;
    }

    /// Every state tensor in layout order (kind-major, then parameter order).
    pub fn state_tensors(&self) -> &[Tensor] {
        &self.state
    }

    /// Every state tensor with its file name `optimizer.<kind>.<parameter>`, in layout order.
    pub fn named_state(&self) -> Vec<(String, Tensor)> {
        let parameter_count = self.parameters.len();
        self.state
            .iter()
            .enumerate()
            .map(|(index, tensor)| {
                let kind = self.state_kinds()[index / parameter_count];
                let parameter_name = &self.parameters[index % parameter_count].0;
                (
                    format!("{STATE_TENSOR_PREFIX}{kind}.{parameter_name}"),
                    tensor.shallow_clone(),
                )
            })
            .collect()
    }

    /// Zeroes every parameter's gradient in place (parameters without one are left alone).
    pub fn zero_grad(&mut self) -> Result<(), TrainError> {
        for (_, parameter) in &self.parameters {
            let mut gradient = parameter.grad();
            if gradient.defined() {
                let _ = gradient.f_detach_()?;
                let _ = gradient.f_zero_()?;
            }
        }
        Ok(())
    }

    /// One update from the parameters' current gradients (parameters without one are skipped),
    /// weight decay added to the gradient as L2 like `torch.optim`.
    pub fn step(&mut self) -> Result<(), TrainError> {
        self.step_count += 1;
        let parameter_count = self.parameters.len();
        tch::no_grad(|| -> Result<(), TrainError> {
            for (index, (_, parameter)) in self.parameters.iter().enumerate() {
                let raw_gradient = parameter.grad();
                if !raw_gradient.defined() {
                    continue;
                }
                let gradient = if self.weight_decay != 0.0 {
                    // gradient + decay * parameter, summed into the one temporary.
                    let mut decayed = parameter.f_mul_scalar(self.weight_decay)?;
                    let _ = decayed.f_add_(&raw_gradient)?;
                    decayed
                } else {
                    raw_gradient
                };
                let mut target = parameter.shallow_clone();
                match self.choice {
                    OptimizerChoice::Adam => {
                        let mut exp_avg = self.state[index].shallow_clone();
                        let mut exp_avg_sq = self.state[parameter_count + index].shallow_clone();
                        adam_update(
                            &mut target,
                            &gradient,
                            &mut exp_avg,
                            &mut exp_avg_sq,
                            self.learning_rate,
                            self.step_count,
                        )?;
                    }
                    OptimizerChoice::SgdMomentum => {
                        let mut momentum_buffer = self.state[index].shallow_clone();
                        if self.step_count == 1 {
                            momentum_buffer.f_copy_(&gradient)?;
                        } else {
                            let _ = momentum_buffer.f_mul_scalar_(SGD_MOMENTUM)?;
                            let _ = momentum_buffer.f_add_(&gradient)?;
                        }
                        let _ =
                            target.f_sub_(&momentum_buffer.f_mul_scalar(self.learning_rate)?)?;
                    }
                }
            }
            Ok(())
        })
    }
}

/// torch's Adam (`torch/csrc/api/src/optim/adam.cpp`, no amsgrad) for one parameter at step `step`.
fn adam_update(
    parameter: &mut Tensor,
    gradient: &Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    learning_rate: f64,
    step: u64,
) -> Result<(), TrainError> {
    let step_power = step as f64;
    let bias_correction1 = 1.0 - ADAM_BETA1.powf(step_power);
    let bias_correction2 = 1.0 - ADAM_BETA2.powf(step_power);
    let _ = exp_avg.f_mul_scalar_(ADAM_BETA1)?;
    let _ = exp_avg.f_add_(&gradient.f_mul_scalar(1.0 - ADAM_BETA1)?)?;
    // The temporaries are updated in place: one allocation each instead of one per operation.
    let mut squared_gradient = gradient.f_mul(gradient)?;
    let _ = squared_gradient.f_mul_scalar_(1.0 - ADAM_BETA2)?;
    let _ = exp_avg_sq.f_mul_scalar_(ADAM_BETA2)?;
    let _ = exp_avg_sq.f_add_(&squared_gradient)?;
    let mut denominator = exp_avg_sq.f_sqrt()?;
    let _ = denominator.f_div_scalar_(bias_correction2.sqrt())?;
    let _ = denominator.f_add_scalar_(ADAM_EPSILON)?;
    let step_size = learning_rate / bias_correction1;
    let mut update = exp_avg.f_div(&denominator)?;
    let _ = update.f_mul_scalar_(step_size)?;
    let _ = parameter.f_sub_(&update)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;
    use tch::nn::{self, OptimizerConfig};

    fn cpu() -> (Kind, tch::Device) {
        (Kind::Float, tch::Device::Cpu)
    }

    /// A conv + linear model in its own var store, parameters sorted by name, drawn from libtorch's
    /// generator (seed it first).
    fn small_model() -> (nn::VarStore, Vec<(String, Tensor)>) {
        let var_store = nn::VarStore::new(tch::Device::Cpu);
        let root = var_store.root();
        let _conv = nn::conv2d(&root / "conv", 2, 3, 3, Default::default());
        let _linear = nn::linear(&root / "fc", 12, 5, Default::default());
        let mut named: Vec<(String, Tensor)> = var_store.variables().into_iter().collect();
        named.sort_by(|left, right| left.0.cmp(&right.0));
        tch::no_grad(|| {
            for (_, tensor) in &named {
                let values = Tensor::randn(tensor.size(), cpu()) * 0.1;
                tensor.shallow_clone().copy_(&values);
            }
        });
        (var_store, named)
    }

    fn shallow(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        named
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor.shallow_clone()))
            .collect()
    }

    fn copy_weights(from: &[(String, Tensor)], to: &[(String, Tensor)]) {
        tch::no_grad(|| {
            for ((_, source), (_, target)) in from.iter().zip(to) {
                target.shallow_clone().copy_(source);
            }
        });
    }

    /// Gives every parameter exactly `gradients[i]` as its gradient: d/dp sum(p * g) = g.
    fn set_gradients(parameters: &[(String, Tensor)], gradients: &[Tensor]) {
        let loss = parameters
            .iter()
            .zip(gradients)
            .map(|((_, parameter), gradient)| (parameter * gradient).sum(Kind::Float))
            .fold(Tensor::from(0.0f32), |total, term| total + term);
        loss.backward();
    }

    fn max_abs_difference(left: &[(String, Tensor)], right: &[(String, Tensor)]) -> f64 {
        left.iter()
            .zip(right)
            .map(|((_, a), (_, b))| (a - b).abs().max().double_value(&[]))
            .fold(0.0, f64::max)
    }

    /// Six steps on the same gradients (the rate halved after three, weight decay on) against
    /// libtorch's C++ optimizers.
    fn assert_matches_libtorch(choice: OptimizerChoice, learning_rate: f64, weight_decay: f64) {
        tch::manual_seed(11);
        let (_ours_store, ours) = small_model();
        let (theirs_store, theirs) = small_model();
        copy_weights(&ours, &theirs);
        let initial: Vec<(String, Tensor)> = ours
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor.detach().copy()))
            .collect();
        let mut optimizer =
            Optimizer::new(choice, shallow(&ours), learning_rate, weight_decay).unwrap();
        let mut reference = match choice {
            OptimizerChoice::Adam => nn::Adam {
                wd: weight_decay,
                ..Default::default()
            }
            .build(&theirs_store, learning_rate)
            .unwrap(),
            OptimizerChoice::SgdMomentum => nn::Sgd {
                momentum: SGD_MOMENTUM,
                dampening: 0.0,
                wd: weight_decay,
                nesterov: false,
            }
            .build(&theirs_store, learning_rate)
            .unwrap(),
        };
        for step in 0..6 {
            if step == 3 {
                optimizer.set_learning_rate(learning_rate * 0.5);
                reference.set_lr(learning_rate * 0.5);
            }
            let gradients: Vec<Tensor> = ours
                .iter()
                .map(|(_, parameter)| Tensor::randn(parameter.size(), cpu()) * (step as f64 + 1.0))
                .collect();
            optimizer.zero_grad().unwrap();
            set_gradients(&ours, &gradients);
            optimizer.step().unwrap();
            reference.zero_grad();
            set_gradients(&theirs, &gradients);
            reference.step();
        }
        assert_eq!(optimizer.step_count(), 6);
        let difference = max_abs_difference(&ours, &theirs);
        println!("{choice:?} vs libtorch after 6 steps: max |difference| {difference:e}");
        assert!(
            difference < 1e-6,
            "{choice:?} differs from libtorch by {difference}"
        );
        let moved = max_abs_difference(&ours, &initial);
        assert!(
            moved > learning_rate,
            "the steps moved the weights by only {moved}"
        );
    }

    #[test]
    fn adam_matches_libtorch_adam() {
        assert_matches_libtorch(OptimizerChoice::Adam, 1e-2, 1e-2);
    }

    #[test]
    fn sgd_momentum_matches_libtorch_sgd() {
        assert_matches_libtorch(OptimizerChoice::SgdMomentum, 1e-2, 1e-2);
    }

    #[test]
    fn state_tensors_are_named_kind_first_then_parameter() {
        let (_store, named) = small_model();
        let optimizer = Optimizer::new(OptimizerChoice::Adam, shallow(&named), 1e-3, 0.0).unwrap();
        let names: Vec<String> = optimizer
            .named_state()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            names,
            [
                "optimizer.exp_avg.conv.bias",
                "optimizer.exp_avg.conv.weight",
                "optimizer.exp_avg.fc.bias",
                "optimizer.exp_avg.fc.weight",
                "optimizer.exp_avg_sq.conv.bias",
                "optimizer.exp_avg_sq.conv.weight",
                "optimizer.exp_avg_sq.fc.bias",
                "optimizer.exp_avg_sq.fc.weight",
            ]
        );
        assert_eq!(optimizer.state_tensors().len(), 8);
    }
}
