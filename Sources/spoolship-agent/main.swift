// spoolship-agent: see SpoolshipCommands/AgentCommand.swift.
import SpoolshipCommands

SpoolshipMain.agent()
