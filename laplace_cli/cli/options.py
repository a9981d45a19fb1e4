"""Every CLI option declared once, as an `Annotated` alias that the commands share.

Defaults live in the command signatures, not here, so one alias serves commands with different
defaults (`--split` is `train` for fit and `test` for evaluate). Options whose value can also
come from a YAML file (`--likelihood` over the data spec's `task`, `--batch-size` over
`batch_size`) default to `None`, meaning "not given", so a flag always wins over YAML and YAML
over the built-in default.

Choices are the `str` enums of `laplace_cli.core.enums`, so `--help` lists them and Typer converts
and checks the value (case-insensitively).

The aliases live in one module per concept (`options_inputs`, `options_fitting`,
`options_output`, `options_execution`, `options_training`; panel titles in `option_panels`);
this module re-exports them all, so that commands import every option from here.
"""

from __future__ import annotations

from laplace_cli.cli.options_execution import BaselineOpt as BaselineOpt
from laplace_cli.cli.options_execution import CheckpointEveryOpt as CheckpointEveryOpt
from laplace_cli.cli.options_execution import CurvatureDtypeOpt as CurvatureDtypeOpt
from laplace_cli.cli.options_execution import DebugOpt as DebugOpt
from laplace_cli.cli.options_execution import DeviceOpt as DeviceOpt
from laplace_cli.cli.options_execution import DtypeOpt as DtypeOpt
from laplace_cli.cli.options_execution import HistoryOpt as HistoryOpt
from laplace_cli.cli.options_execution import JsonOpt as JsonOpt
from laplace_cli.cli.options_execution import JunitOpt as JunitOpt
from laplace_cli.cli.options_execution import LogOpt as LogOpt
from laplace_cli.cli.options_execution import QuietOpt as QuietOpt
from laplace_cli.cli.options_execution import ResumeOpt as ResumeOpt
from laplace_cli.cli.options_execution import SeedOpt as SeedOpt
from laplace_cli.cli.options_execution import StrictBaselineOpt as StrictBaselineOpt
from laplace_cli.cli.options_execution import SummaryMdOpt as SummaryMdOpt
from laplace_cli.cli.options_execution import ThreadsOpt as ThreadsOpt
from laplace_cli.cli.options_fitting import BackendOpt as BackendOpt
from laplace_cli.cli.options_fitting import CurvatureOpt as CurvatureOpt
from laplace_cli.cli.options_fitting import GridMaxOpt as GridMaxOpt
from laplace_cli.cli.options_fitting import GridMinOpt as GridMinOpt
from laplace_cli.cli.options_fitting import GridSizeOpt as GridSizeOpt
from laplace_cli.cli.options_fitting import LastLayerNameOpt as LastLayerNameOpt
from laplace_cli.cli.options_fitting import LikelihoodOpt as LikelihoodOpt
from laplace_cli.cli.options_fitting import MethodOpt as MethodOpt
from laplace_cli.cli.options_fitting import ModelFactoryOpt as ModelFactoryOpt
from laplace_cli.cli.options_fitting import ModelKwargsOpt as ModelKwargsOpt
from laplace_cli.cli.options_fitting import ModelOverrideOpt as ModelOverrideOpt
from laplace_cli.cli.options_fitting import PriorPrecisionOpt as PriorPrecisionOpt
from laplace_cli.cli.options_fitting import PriorStructureOpt as PriorStructureOpt
from laplace_cli.cli.options_fitting import RankOpt as RankOpt
from laplace_cli.cli.options_fitting import StructureOpt as StructureOpt
from laplace_cli.cli.options_fitting import SubnetworkOpt as SubnetworkOpt
from laplace_cli.cli.options_fitting import SubsetOpt as SubsetOpt
from laplace_cli.cli.options_fitting import TemperatureOpt as TemperatureOpt
from laplace_cli.cli.options_fitting import TrustCheckpointOpt as TrustCheckpointOpt
from laplace_cli.cli.options_fitting import TuneLossOpt as TuneLossOpt
from laplace_cli.cli.options_inputs import BinningOpt as BinningOpt
from laplace_cli.cli.options_inputs import BinsOpt as BinsOpt
from laplace_cli.cli.options_inputs import BootstrapOpt as BootstrapOpt
from laplace_cli.cli.options_inputs import ColumnsOpt as ColumnsOpt
from laplace_cli.cli.options_inputs import ConfidenceOpt as ConfidenceOpt
from laplace_cli.cli.options_inputs import ConformalCalibrateOpt as ConformalCalibrateOpt
from laplace_cli.cli.options_inputs import ConformalLevelOpt as ConformalLevelOpt
from laplace_cli.cli.options_inputs import ConformalPredictOpt as ConformalPredictOpt
from laplace_cli.cli.options_inputs import ConformalScoreOpt as ConformalScoreOpt
from laplace_cli.cli.options_inputs import DataOpt as DataOpt
from laplace_cli.cli.options_inputs import HeaderOpt as HeaderOpt
from laplace_cli.cli.options_inputs import InputOpt as InputOpt
from laplace_cli.cli.options_inputs import IntervalMethodOpt as IntervalMethodOpt
from laplace_cli.cli.options_inputs import ModelArg as ModelArg
from laplace_cli.cli.options_inputs import OodDataOpt as OodDataOpt
from laplace_cli.cli.options_inputs import PerLabelTemperatureOpt as PerLabelTemperatureOpt
from laplace_cli.cli.options_inputs import PosteriorArg as PosteriorArg
from laplace_cli.cli.options_inputs import PosteriorOpt as PosteriorOpt
from laplace_cli.cli.options_inputs import PosteriorsArg as PosteriorsArg
from laplace_cli.cli.options_inputs import PriorPosteriorOpt as PriorPosteriorOpt
from laplace_cli.cli.options_inputs import RecipeArg as RecipeArg
from laplace_cli.cli.options_inputs import SplitOpt as SplitOpt
from laplace_cli.cli.options_inputs import XKeyOpt as XKeyOpt
from laplace_cli.cli.options_output import BatchSizeOpt as BatchSizeOpt
from laplace_cli.cli.options_output import FailIfOpt as FailIfOpt
from laplace_cli.cli.options_output import FormatOpt as FormatOpt
from laplace_cli.cli.options_output import HtmlOpt as HtmlOpt
from laplace_cli.cli.options_output import IntervalOpt as IntervalOpt
from laplace_cli.cli.options_output import LinkApproxOpt as LinkApproxOpt
from laplace_cli.cli.options_output import OutputDirOpt as OutputDirOpt
from laplace_cli.cli.options_output import OutputFileOpt as OutputFileOpt
from laplace_cli.cli.options_output import PlotOpt as PlotOpt
from laplace_cli.cli.options_output import PredTypeOpt as PredTypeOpt
from laplace_cli.cli.options_output import ReportOpt as ReportOpt
from laplace_cli.cli.options_output import SamplesOpt as SamplesOpt
from laplace_cli.cli.options_output import SetOpt as SetOpt
from laplace_cli.cli.options_training import BurninOpt as BurninOpt
from laplace_cli.cli.options_training import EpochsOpt as EpochsOpt
from laplace_cli.cli.options_training import FixSigmaNoiseOpt as FixSigmaNoiseOpt
from laplace_cli.cli.options_training import HyperstepsOpt as HyperstepsOpt
from laplace_cli.cli.options_training import LrHypOpt as LrHypOpt
from laplace_cli.cli.options_training import LrOpt as LrOpt
from laplace_cli.cli.options_training import MarglikFrequencyOpt as MarglikFrequencyOpt
from laplace_cli.cli.options_training import PatienceOpt as PatienceOpt
from laplace_cli.cli.options_training import SigmaNoiseInitOpt as SigmaNoiseInitOpt
from laplace_cli.cli.options_training import TrainOutputOpt as TrainOutputOpt
from laplace_cli.core.enums import Dtype as Dtype
from laplace_cli.core.enums import OutputFormat as OutputFormat
from laplace_cli.core.enums import TuneLoss as TuneLoss

# Dtype, OutputFormat and TuneLoss lived here before moving to laplace_cli.core.enums; importing
# them from this module still works.
