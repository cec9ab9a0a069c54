//! Models (lenet, resnet) and the data-parallel training loop on libtorch.
#[cfg(test)]
mod smoke {
    #[test]
    fn libtorch_links() {
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        assert_eq!(t.sum(tch::Kind::Float).double_value(&[]), 6.0);
    }
}
