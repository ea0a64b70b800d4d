// spoolship-collector: see SpoolshipCommands/CollectorCommand.swift.
import SpoolshipCommands

SpoolshipMain.collector()
