"""GNU-style command lines over ``usage.Options`` (msrpc.cmdline)."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import TestCase

from msrpc.cmdline import HelpRequested, InterspersedOptions, option_table, split_argv


class Example(InterspersedOptions):
    optFlags = [["verbose", "v", "Say more."], ["quiet", "q", "Say less."]]
    optParameters = [["timeout", "t", 1.0, "Seconds.", float],
                     ["concurrency", "c", 1, "Calls in flight.", int],
                     ["config", None, None, "A file."]]

    def parseArgs(self, *args: str) -> None:
        self["args"] = list(args)


def parse(*argv: str) -> Example:
    options = Example()
    options.parseOptions(list(argv))
    return options


class SplitTests(TestCase):
    table = option_table(Example())

    def test_option_table_knows_which_options_take_values(self) -> None:
        self.assertEqual(self.table["--timeout"], True)
        self.assertEqual(self.table["-t"], True)
        self.assertEqual(self.table["--verbose"], False)
        self.assertEqual(self.table["-v"], False)

    def test_options_are_normalised_and_arguments_kept_in_order(self) -> None:
        self.assertEqual(split_argv(["a", "--timeout", "2", "b", "-v", "--conc=3", "c"],
                                    self.table),
                         (["--timeout=2", "-v", "--concurrency=3"], ["a", "b", "c"]))

    def test_short_clusters_and_attached_values(self) -> None:
        self.assertEqual(split_argv(["-vq", "-t5", "-vt", "6"], self.table)[0],
                         ["-v", "-q", "-t", "5", "-v", "-t", "6"])

    def test_double_dash_ends_options(self) -> None:
        self.assertEqual(split_argv(["a", "--", "--timeout", "-v"], self.table),
                         ([], ["a", "--timeout", "-v"]))

    def test_a_lone_dash_and_negative_numbers_are_arguments(self) -> None:
        self.assertEqual(split_argv(["-", "-1", "-2.5", "-.5"], self.table),
                         ([], ["-", "-1", "-2.5", "-.5"]))

    def test_values_may_start_with_a_dash(self) -> None:
        self.assertEqual(split_argv(["--config", "-weird", "-t", "-1"], self.table)[0],
                         ["--config=-weird", "-t", "-1"])

    def test_stop_at_the_first_argument(self) -> None:
        self.assertEqual(split_argv(["-v", "--timeout", "2", "cmd", "--x"], self.table,
                                    stop_at_argument=True),
                         (["-v", "--timeout=2"], ["cmd", "--x"]))

    def test_unknown_ambiguous_and_malformed_options_are_usage_errors(self) -> None:
        for argv, message in ((["--nope"], "unknown option --nope"),
                              (["-x"], "unknown option -x"),
                              (["--c"], "ambiguous"),
                              (["--timeout"], "--timeout needs a value"),
                              (["-t"], "-t needs a value"),
                              (["--verbose=1"], "--verbose takes no value")):
            error = self.assertRaises(usage.UsageError, split_argv, argv, self.table)
            self.assertIn(message, str(error), argv)


class InterspersedOptionsTests(TestCase):
    def test_options_anywhere_reach_usage_options(self) -> None:
        options = parse("x", "--timeout", "2.5", "y", "-vc", "4")
        self.assertEqual((options["args"], options["timeout"], options["verbose"],
                          options["concurrency"]), (["x", "y"], 2.5, True, 4))

    def test_arguments_that_look_like_options_after_double_dash(self) -> None:
        self.assertEqual(parse("--", "--verbose")["args"], ["--verbose"])

    def test_help_is_raised_not_printed_and_exited(self) -> None:
        error = self.assertRaises(HelpRequested, parse, "a", "--help")
        self.assertIn("--timeout", error.text)
