// spoolship, the operator's tool (SpoolshipCommands/Tool); installed, also the agent and the
// collector, chosen by the name it is started under (SpoolshipCommands/Programs.swift).
import SpoolshipCommands

SpoolshipMain.byName()
