//! The down, mid and up blocks of UNet3DConditionModel, ported from diffusers 0.42.1
//! `models/unets/unet_3d_blocks.py` (`CrossAttnDownBlock3D`, `DownBlock3D`, `UNetMidBlock3DCrossAttn`,
//! `UpBlock3D`, `CrossAttnUpBlock3D`). One enum per direction: the attention layers are optional.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::attention::{Transformer2DModel, TransformerTemporalModel};
use super::resnet::{Downsample2D, ResnetBlock2D, TemporalConvLayer, Upsample2D};
use crate::error::Result;

/// Shared settings of every block.
#[derive(Debug, Clone, Copy)]
pub struct BlockSettings {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub cross_attention_dim: usize,
    /// Per-head width inside the block's transformers (diffusers passes the config's `attention_head_dim` as
    /// "num_attention_heads" and builds `Transformer2DModel(channels // it, it)`: heads = channels / width).
    pub head_dim: usize,
}

/// The spatial + temporal attention pair that follows each resnet in a cross-attention block.
#[derive(Debug, Clone)]
struct AttentionPair {
    spatial: Transformer2DModel,
    temporal: TransformerTemporalModel,
}

impl AttentionPair {
    fn new(channels: usize, s: &BlockSettings, index: usize, vb: &VarBuilder) -> Result<Self> {
        let heads = channels / s.head_dim;
        Ok(Self {
            spatial: Transformer2DModel::new(
                heads,
                s.head_dim,
                channels,
                s.groups,
                s.cross_attention_dim,
                vb.pp("attentions").pp(index),
            )?,
            temporal: TransformerTemporalModel::new(
                heads,
                s.head_dim,
                channels,
                s.groups,
                vb.pp("temp_attentions").pp(index),
            )?,
        })
    }
    fn forward(&self, x: &Tensor, context: &Tensor, num_frames: usize) -> Result<Tensor> {
        let x = self.spatial.forward(x, context)?;
        self.temporal.forward(&x, num_frames)
    }
}

/// `CrossAttnDownBlock3D` (with attention) or `DownBlock3D` (without).
#[derive(Debug, Clone)]
pub struct DownBlock3D {
    resnets: Vec<ResnetBlock2D>,
    temp_convs: Vec<TemporalConvLayer>,
    attentions: Option<Vec<AttentionPair>>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock3D {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cin: usize,
        cout: usize,
        layers: usize,
        cross_attention: bool,
        add_downsample: bool,
        downsample_padding: usize,
        s: &BlockSettings,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut temp_convs = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let c = if i == 0 { cin } else { cout };
            resnets.push(ResnetBlock2D::new(
                c,
                cout,
                s.temb_channels,
                s.groups,
                s.eps,
                vb.pp("resnets").pp(i),
            )?);
            temp_convs.push(TemporalConvLayer::new(
                cout,
                s.groups,
                vb.pp("temp_convs").pp(i),
            )?);
            if cross_attention {
                attentions.push(AttentionPair::new(cout, s, i, &vb)?);
            }
        }
        let downsampler = if add_downsample {
            Some(Downsample2D::new(
                cout,
                downsample_padding,
                vb.pp("downsamplers").pp("0"),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            temp_convs,
            attentions: cross_attention.then_some(attentions),
            downsampler,
        })
    }

    /// Returns the output and the states the up path consumes as skip connections.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        num_frames: usize,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (i, (resnet, temp_conv)) in self.resnets.iter().zip(&self.temp_convs).enumerate() {
            h = resnet.forward(&h, temb)?;
            h = temp_conv.forward(&h, num_frames)?;
            if let Some(attn) = &self.attentions {
                h = attn[i].forward(&h, context, num_frames)?;
            }
            states.push(h.clone());
        }
        if let Some(d) = &self.downsampler {
            h = d.forward(&h)?;
            states.push(h.clone());
        }
        Ok((h, states))
    }
}

/// `UNetMidBlock3DCrossAttn` (num_layers 1): resnet, temporal conv, then (attention, temporal attention,
/// resnet, temporal conv).
#[derive(Debug, Clone)]
pub struct MidBlock3D {
    resnets: Vec<ResnetBlock2D>,
    temp_convs: Vec<TemporalConvLayer>,
    attentions: Vec<AttentionPair>,
}

impl MidBlock3D {
    pub fn new(channels: usize, s: &BlockSettings, vb: VarBuilder) -> Result<Self> {
        let mut resnets = vec![ResnetBlock2D::new(
            channels,
            channels,
            s.temb_channels,
            s.groups,
            s.eps,
            vb.pp("resnets").pp("0"),
        )?];
        let mut temp_convs = vec![TemporalConvLayer::new(
            channels,
            s.groups,
            vb.pp("temp_convs").pp("0"),
        )?];
        let attentions = vec![AttentionPair::new(channels, s, 0, &vb)?];
        resnets.push(ResnetBlock2D::new(
            channels,
            channels,
            s.temb_channels,
            s.groups,
            s.eps,
            vb.pp("resnets").pp("1"),
        )?);
        temp_convs.push(TemporalConvLayer::new(
            channels,
            s.groups,
            vb.pp("temp_convs").pp("1"),
        )?);
        Ok(Self {
            resnets,
            temp_convs,
            attentions,
        })
    }

    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        num_frames: usize,
    ) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, temb)?;
        h = self.temp_convs[0].forward(&h, num_frames)?;
        for (i, attn) in self.attentions.iter().enumerate() {
            h = attn.forward(&h, context, num_frames)?;
            h = self.resnets[i + 1].forward(&h, temb)?;
            h = self.temp_convs[i + 1].forward(&h, num_frames)?;
        }
        Ok(h)
    }
}

/// `CrossAttnUpBlock3D` (with attention) or `UpBlock3D` (without). Each layer concatenates one skip state.
#[derive(Debug, Clone)]
pub struct UpBlock3D {
    resnets: Vec<ResnetBlock2D>,
    temp_convs: Vec<TemporalConvLayer>,
    attentions: Option<Vec<AttentionPair>>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock3D {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cin: usize,
        prev_output_channel: usize,
        cout: usize,
        layers: usize,
        cross_attention: bool,
        add_upsample: bool,
        s: &BlockSettings,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut temp_convs = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let res_skip = if i == layers - 1 { cin } else { cout };
            let resnet_in = if i == 0 { prev_output_channel } else { cout };
            resnets.push(ResnetBlock2D::new(
                resnet_in + res_skip,
                cout,
                s.temb_channels,
                s.groups,
                s.eps,
                vb.pp("resnets").pp(i),
            )?);
            temp_convs.push(TemporalConvLayer::new(
                cout,
                s.groups,
                vb.pp("temp_convs").pp(i),
            )?);
            if cross_attention {
                attentions.push(AttentionPair::new(cout, s, i, &vb)?);
            }
        }
        let upsampler = if add_upsample {
            Some(Upsample2D::new(cout, vb.pp("upsamplers").pp("0"))?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            temp_convs,
            attentions: cross_attention.then_some(attentions),
            upsampler,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.resnets.len()
    }

    /// `skips` are this block's skip states in the order they were produced (the last is consumed first).
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        num_frames: usize,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, (resnet, temp_conv)) in self.resnets.iter().zip(&self.temp_convs).enumerate() {
            let skip = &skips[skips.len() - 1 - i];
            h = Tensor::cat(&[&h, skip], 1)?;
            h = resnet.forward(&h, temb)?;
            h = temp_conv.forward(&h, num_frames)?;
            if let Some(attn) = &self.attentions {
                h = attn[i].forward(&h, context, num_frames)?;
            }
        }
        if let Some(u) = &self.upsampler {
            h = u.forward(&h, upsample_size)?;
        }
        Ok(h)
    }
}
