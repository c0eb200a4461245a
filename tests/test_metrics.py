"""The four metrics against matrices worked out by hand."""
import numpy as np
import pytest

from cl_utils.metrics import average_accuracy, backward_transfer, forgetting, forward_transfer, summary

# T = 3. Row i: after task i. Column j: task j.
R3 = [[0.9, 0.2, 0.1],
      [0.6, 0.8, 0.3],
      [0.5, 0.7, 0.95]]
b3 = [0.1, 0.15, 0.05]


def test_average_accuracy_hand_worked():
    assert average_accuracy(R3) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert average_accuracy([[0.4]]) == pytest.approx(0.4)
    assert average_accuracy([[0.9, 0.1], [0.3, 0.8]]) == pytest.approx(0.55)


def test_backward_transfer_hand_worked():
    # ((0.5 - 0.9) + (0.7 - 0.8)) / 2 = -0.25
    assert backward_transfer(R3) == pytest.approx(-0.25)
    assert backward_transfer([[0.9, 0.1], [0.3, 0.8]]) == pytest.approx(0.3 - 0.9)
    assert backward_transfer([[0.4]]) == 0.0


def test_backward_transfer_positive_when_old_tasks_improve():
    assert backward_transfer([[0.5, 0.0], [0.7, 0.9]]) == pytest.approx(0.2)


def test_forward_transfer_hand_worked():
    # ((R[0,1] - b[1]) + (R[1,2] - b[2])) / 2 = ((0.2 - 0.15) + (0.3 - 0.05)) / 2 = 0.15
    assert forward_transfer(R3, b3) == pytest.approx(0.15)
    assert forward_transfer([[0.9, 0.1], [0.3, 0.8]], [0.0, 0.4]) == pytest.approx(0.1 - 0.4)
    assert forward_transfer([[0.4]], [0.1]) == 0.0


def test_forgetting_hand_worked_uses_best_earlier_score():
    # j=0: max(R[0,0], R[1,0]) - R[2,0] = 0.9 - 0.5 = 0.4 ; j=1: max(R[1,1]) - R[2,1] = 0.8 - 0.7 = 0.1
    assert forgetting(R3) == pytest.approx(0.25)
    # The maximum is over l in [j, T-2], so a later peak counts: j=0 peaks at row 1 (0.95).
    R = [[0.6, 0.0, 0.0], [0.95, 0.5, 0.0], [0.7, 0.5, 0.9]]
    assert forgetting(R) == pytest.approx(((0.95 - 0.7) + (0.5 - 0.5)) / 2)
    assert forgetting([[0.9, 0.1], [0.3, 0.8]]) == pytest.approx(0.6)
    assert forgetting([[0.4]]) == 0.0


def test_forgetting_differs_from_minus_bwt_when_a_task_peaks_late():
    R = [[0.6, 0.0, 0.0], [0.95, 0.5, 0.0], [0.7, 0.5, 0.9]]
    assert forgetting(R) != pytest.approx(-backward_transfer(R))


def test_summary_keys_and_numpy_input():
    s = summary(np.array(R3), np.array(b3))
    assert set(s) == {"ACC", "BWT", "FWT", "forgetting"}
    assert s["BWT"] == pytest.approx(-0.25)


@pytest.mark.parametrize("fn", [average_accuracy, backward_transfer, forgetting])
@pytest.mark.parametrize("bad", [[[0.1, 0.2]], [0.1, 0.2], [[]], [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]])
def test_non_square_raises(fn, bad):
    with pytest.raises(ValueError, match="square"):
        fn(bad)


def test_forward_transfer_checks_b_length():
    with pytest.raises(ValueError, match="length 3"):
        forward_transfer(R3, [0.1, 0.2])
    with pytest.raises(ValueError, match="square"):
        forward_transfer([[0.1, 0.2]], [0.1, 0.2])
