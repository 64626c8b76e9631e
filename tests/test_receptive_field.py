"""Receptive fields (cnncc/receptive_field.py), net.summary() and `cnncc info --receptive-field`.

Expected values are computed by hand, layer by layer, in input pixels with pixel centres at
0, 1, 2, ...: r += (k_eff - 1) * j, j *= stride, start += ((k_eff - 1) / 2 - pad_begin) * j.
"""
from __future__ import annotations

import pytest

from cnncc import dsl
from cnncc.cli import main
from cnncc.dsl import zoo
from cnncc.receptive_field import receptive_fields, summary_rows


def field_of(net, node_name):
    g = net.to_graph()
    (node,) = [n for n in g.nodes if n.name == node_name]
    f = receptive_fields(g)[node.outputs[0]]
    return f.size, f.jump, f.start


# VGG-11, 224x224: five 3x3/p1 convs and pools before features.18:
#   conv 3; pool 4 j2 s0.5; conv 8; pool 10 j4 s1.5; conv 18, 26; pool 30 j8 s3.5; conv 46, 62;
#   pool 70 j16 s7.5; conv 102, 134.
# ResNet-18: conv1 7x7/s2/p3 r7 j2 s0; maxpool 3x3/s2/p1 r11 j4 s0; layer1 4 convs r43;
#   layer2 s2 conv r51 j8, 3 more r99; layer3 r115 j16 then r211; layer4 r243 j32 then r435.
# AlexNet: 11x11/s4/p2 r11 j4 s3; pool 3/2 r19 j8 s7; 5x5/p2 r51; pool r67 j16 s15;
#   three 3x3/p1 r163; pool r195 j32 s31.
# All-CNN-C: 3x3 p1 r3, r5; 3x3/s2/p1 r7 j2; r11, r15; s2 r19 j4; 3x3 valid r27 s4.
# tiny_c3d: conv 3x3x3/p1 r3; pool (1,2,2) r(3,4,4) j(1,2,2) s(0,.5,.5); conv r(5,8,8);
#   pool 2 r(6,10,10) j(2,4,4) s(.5,1.5,1.5); conv r(10,18,18).
@pytest.mark.parametrize("net,node,size,jump,start", [
    ("vgg11", "features.18", 134, 16, 7.5),
    ("resnet18", "layer4.1.relu", 435, 32, 0.0),
    ("resnet18", "layer2.0.downsample.conv", 43, 8, 0.0),     # 1x1/s2 on layer1's r43
    ("alexnet", "maxpool_2", 195, 32, 31.0),
    ("all_conv", "conv7.conv", 27, 4, 4.0),
])
def test_zoo_fields_match_hand_computed_values(net, node, size, jump, start):
    f = field_of(zoo.ZOO[net](), node)
    assert f == ((size, size), (jump, jump), (start, start))


def test_3d_net_fields():
    assert field_of(zoo.ZOO["tiny_c3d"](), "conv3") == ((10, 18, 18), (2, 4, 4),
                                                        (0.5, 1.5, 1.5))


def test_every_conv_and_pool_kind():
    def kinds(x, x1, off):
        y = dsl.conv2d(x, 4, 3, stride=2, padding=1, name="c")             # r3 j2 s0
        d = dsl.conv2d(y, 4, 3, dilation=2, padding=2, name="dil")          # k_eff 5: r11 s0
        t = dsl.conv_transpose2d(d, 4, 2, stride=2, name="up")   # j1, r12, s0+(0-.5)*1
        lc = dsl.locally_connected2d(x, 3, 3, stride=2, padding=1, name="lc")
        tc = dsl.tiled_conv2d(lc, 3, 2, tiles=2, name="tc")                 # r3+2 j2 s1
        dc = dsl.deform_conv2d(x, off, 2, 3, name="dc")                   # nominal: r3 s1
        lp = dsl.lp_pool2d(dc, 2, name="lp")                              # r4 j2 s1.5
        c1 = dsl.max_pool1d(dsl.conv1d(x1, 2, 3, dilation=2, padding=2, name="c1"), 2,
                            name="p1")                                    # r5 -> r6 j2 s.5
        g = dsl.global_avg_pool(d, name="gap")                  # 11 + (8-1)*2 = 25, s7
        return {"up": t, "tc": tc, "lp": lp, "p1": c1, "gap": g}

    net = dsl.build(kinds, {"x": (1, 3, 16, 16), "x1": (1, 2, 12), "off": (1, 18, 14, 14)})
    g = net.to_graph()
    fields = receptive_fields(g)
    by_name = {n.name: fields[n.outputs[0]] for n in g.nodes}
    assert (by_name["dil"].size, by_name["dil"].jump, by_name["dil"].start) == \
        ((11, 11), (2, 2), (0, 0))
    assert (by_name["up"].size, by_name["up"].jump, by_name["up"].start) == \
        ((12, 12), (1, 1), (-0.5, -0.5))
    assert (by_name["tc"].size, by_name["tc"].jump, by_name["tc"].start) == \
        ((5, 5), (2, 2), (1, 1))
    assert (by_name["dc"].size, by_name["dc"].start) == ((3, 3), (1, 1))
    assert (by_name["lp"].size, by_name["lp"].jump, by_name["lp"].start) == \
        ((4, 4), (2, 2), (1.5, 1.5))
    # The 1-D branch's field is in the pixels of its own input, x1.
    assert (by_name["p1"].size, by_name["p1"].jump, by_name["p1"].start) == ((6,), (2,), (0.5,))
    assert (by_name["gap"].size, by_name["gap"].start) == ((25, 25), (7, 7))


def test_summary_and_cli(capsys):
    net = zoo.ZOO["tiny_cnn"]()
    text = net.summary(print_fn=None)
    rows = summary_rows(net.to_graph())
    lines = text.splitlines()
    assert len(rows) == len(net.to_graph().nodes) and len(lines) == len(rows) + 4
    assert all(r["rf_size"] is not None for r in rows)
    assert lines[1].split()[:5] == ["layer", "op", "output", "params", "MFLOPs"]
    assert "RF size" in lines[1] and "jump" in lines[1] and "start" in lines[1]
    assert main(["info", "zoo:resnet18", "--receptive-field"]) == 0
    out = capsys.readouterr().out
    last = [line for line in out.splitlines() if line.startswith("layer4.1.relu ")]
    assert last and "435x435" in last[0] and "32x32" in last[0]
