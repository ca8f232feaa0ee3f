// Command porcupine-check times porcupine on history files, for
// bench/porcupine_compare.py.
//
//	porcupine-check -model register|kv -repeat N [-timeout-seconds S] FILE...
//
// Theory. Each FILE is read into porcupine Operations (not timed), then
// porcupine.CheckOperationsTimeout runs -repeat times on them and each run's
// wall time is recorded: only the check, after parsing. One JSON object a
// line comes out per file: {"file", "operations", "verdict", "seconds": [..]}.
//
// The files are the ones the Python checker reads, with the same meaning:
//
//   - register: Jepsen's etcd text logs (`INFO jepsen.util - 3 :invoke :cas
//     [3 0]`), a register that starts absent; read, write, cas.
//   - kv: Jepsen EDN maps, one a line (`{:process 0, :type :invoke, :f :get,
//     :key "3", :value nil}`), a string per key that starts empty; get,
//     put, append. Partitioned by key, as porcupine's kv example does.
//
// The line number is the time. A completion `ok` gives the result; `fail`
// means the operation did not happen (a failed cas is kept as the read it
// is: the register did not hold its expected value); `info`, or an
// invocation never completed, may take effect at any time after its
// invocation, so its return is placed after the last line, and a read of
// unknown result is dropped (it constrains nothing). Bad input is an error
// naming the file and line, and exit status 2.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// absentValue is the register's state before any write (the logs' nil).
const absentValue = math.MinInt64

type registerInput struct {
	function string // "read", "write" or "cas"
	first    int64  // the written value, or cas's expected one
	second   int64  // cas's new value
}

type registerOutput struct {
	known bool  // false for an indeterminate write or cas
	ok    bool  // a cas: whether it swapped
	value int64 // a read's result
}

type keyValueInput struct {
	function string // "get", "put" or "append"
	key      string
	argument string
}

type keyValueOutput struct {
	value string // a get's result ("" for nil)
}

var registerModel = porcupine.Model{
	Init: func() interface{} { return int64(absentValue) },
	Step: func(stateValue, inputValue, outputValue interface{}) (bool, interface{}) {
		state := stateValue.(int64)
		input := inputValue.(registerInput)
		output := outputValue.(registerOutput)
		switch input.function {
		case "read":
			return state == output.value, state
		case "write":
			return true, input.first
		}
		matches := state == input.first
		if !output.known {
			if matches {
				return true, input.second
			}
			return true, state
		}
		if output.ok {
			return matches, input.second
		}
		return !matches, state
	},
	Hash: func(stateValue interface{}) uint64 {
		// A 64-bit finalizer: equal states, equal hashes.
		hash := uint64(stateValue.(int64))
		hash ^= hash >> 33
		hash *= 0xff51afd7ed558ccd
		hash ^= hash >> 33
		return hash
	},
}

var keyValueModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, operation := range history {
			key := operation.Input.(keyValueInput).key
			if _, seen := byKey[key]; !seen {
				keys = append(keys, key)
			}
			byKey[key] = append(byKey[key], operation)
		}
		partitions := make([][]porcupine.Operation, 0, len(keys))
		for _, key := range keys {
			partitions = append(partitions, byKey[key])
		}
		return partitions
	},
	Init: func() interface{} { return "" },
	Step: func(stateValue, inputValue, outputValue interface{}) (bool, interface{}) {
		state := stateValue.(string)
		input := inputValue.(keyValueInput)
		switch input.function {
		case "get":
			return outputValue.(keyValueOutput).value == state, state
		case "put":
			return true, input.argument
		}
		return true, state + input.argument
	},
	Hash: func(stateValue interface{}) uint64 {
		hash := fnv.New64a()
		hash.Write([]byte(stateValue.(string)))
		return hash.Sum64()
	},
}

// event is one invocation or completion, as read from a line.
type event struct {
	process   int
	eventType string // invoke, ok, fail, info
	function  string
	key       string
	value     string // the EDN text of the value
	line      int64
}

var logLine = regexp.MustCompile(`\bINFO\s+jepsen\.util\s+-\s+(\S+)\s+:(invoke|ok|fail|info)\s+:(\S+)(?:\s+(.*?))?\s*$`)

var ednField = regexp.MustCompile(`:(process|type|f|key|value)\s+("(?:[^"\\]|\\.)*"|\[[^\]]*\]|[^,}\s]+)`)

func readEvents(path string, model string) ([]event, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 1<<24)
	var events []event
	var lineNumber int64
	for scanner.Scan() {
		lineNumber++
		line := strings.TrimSpace(scanner.Text())
		if line == "" {
			continue
		}
		if model == "register" {
			match := logLine.FindStringSubmatch(line)
			if match == nil {
				continue // nemesis and setup lines
			}
			process, err := strconv.Atoi(match[1])
			if err != nil {
				continue // the nemesis is not a client
			}
			events = append(events, event{process, match[2], match[3], "", match[4], lineNumber})
			continue
		}
		fields := map[string]string{}
		for _, match := range ednField.FindAllStringSubmatch(line, -1) {
			fields[match[1]] = match[2]
		}
		for _, name := range []string{"process", "type", "f"} {
			if _, found := fields[name]; !found {
				return nil, fmt.Errorf("%s:%d: the event has no :%s", path, lineNumber, name)
			}
		}
		if strings.HasPrefix(fields["process"], ":") {
			continue // the nemesis is not a client
		}
		process, err := strconv.Atoi(fields["process"])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: :process must be an integer", path, lineNumber)
		}
		key, err := ednString(fields["key"])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: the key: %v", path, lineNumber, err)
		}
		events = append(events, event{process, strings.TrimPrefix(fields["type"], ":"),
			strings.TrimPrefix(fields["f"], ":"), key, fields["value"], lineNumber})
	}
	return events, scanner.Err()
}

// ednString reads nil, a string or a number as a string.
func ednString(text string) (string, error) {
	if text == "" || text == "nil" {
		return "", nil
	}
	if strings.HasPrefix(text, "\"") {
		return strconv.Unquote(text)
	}
	return text, nil
}

// ednInteger reads nil (the absent value) or an integer.
func ednInteger(text string) (int64, error) {
	if text == "nil" || text == "" {
		return absentValue, nil
	}
	return strconv.ParseInt(text, 10, 64)
}

func ednPair(text string) (int64, int64, error) {
	words := strings.Fields(strings.Trim(text, "[]"))
	if len(words) != 2 || !strings.HasPrefix(text, "[") {
		return 0, 0, fmt.Errorf("a cas argument must be [expected new], not %q", text)
	}
	first, err := ednInteger(words[0])
	if err != nil {
		return 0, 0, err
	}
	second, err := ednInteger(words[1])
	return first, second, err
}

// operationsOf pairs events per process into porcupine Operations.
func operationsOf(path string, model string, events []event) ([]porcupine.Operation, error) {
	pending := map[int]event{}
	var operations []porcupine.Operation
	endOfHistory := int64(1)
	if len(events) > 0 {
		endOfHistory = events[len(events)-1].line + 1
	}
	add := func(invocation event, completion *event) error {
		status, returnTime, result := "info", endOfHistory, ""
		if completion != nil {
			status, result = completion.eventType, completion.value
			if status != "info" {
				returnTime = completion.line
			}
		}
		where := fmt.Sprintf("%s:%d", path, invocation.line)
		operation, keep, err := operationFor(model, invocation, status, result)
		if err != nil {
			return fmt.Errorf("%s: %v", where, err)
		}
		if keep {
			operation.ClientId = invocation.process
			operation.Call = invocation.line
			operation.Return = returnTime
			operations = append(operations, operation)
		}
		return nil
	}
	for _, current := range events {
		if current.eventType == "invoke" {
			if _, busy := pending[current.process]; busy {
				return nil, fmt.Errorf("%s:%d: process %d invokes while an operation is pending", path, current.line, current.process)
			}
			pending[current.process] = current
			continue
		}
		invocation, found := pending[current.process]
		if !found {
			return nil, fmt.Errorf("%s:%d: process %d completes an operation it never invoked", path, current.line, current.process)
		}
		delete(pending, current.process)
		completion := current
		if err := add(invocation, &completion); err != nil {
			return nil, err
		}
	}
	// Invocations never completed, in the order they were made.
	var unfinished []event
	for _, invocation := range pending {
		unfinished = append(unfinished, invocation)
	}
	sort.Slice(unfinished, func(i, j int) bool { return unfinished[i].line < unfinished[j].line })
	for _, invocation := range unfinished {
		if err := add(invocation, nil); err != nil {
			return nil, err
		}
	}
	return operations, nil
}

// operationFor builds one operation; keep is false when it constrains nothing.
func operationFor(model string, invocation event, status string, result string) (porcupine.Operation, bool, error) {
	known := status == "ok"
	if model == "kv" {
		argument, err := ednString(invocation.value)
		if err != nil {
			return porcupine.Operation{}, false, err
		}
		switch invocation.function {
		case "get":
			if !known {
				return porcupine.Operation{}, false, nil
			}
			value, err := ednString(result)
			if err != nil {
				return porcupine.Operation{}, false, err
			}
			return porcupine.Operation{Input: keyValueInput{"get", invocation.key, ""}, Output: keyValueOutput{value}}, true, nil
		case "put", "append":
			if status == "fail" {
				return porcupine.Operation{}, false, nil
			}
			return porcupine.Operation{Input: keyValueInput{invocation.function, invocation.key, argument}, Output: keyValueOutput{}}, true, nil
		}
		return porcupine.Operation{}, false, fmt.Errorf("the kv model has no operation %q", invocation.function)
	}
	switch invocation.function {
	case "read":
		if !known {
			return porcupine.Operation{}, false, nil
		}
		value, err := ednInteger(result)
		if err != nil {
			return porcupine.Operation{}, false, err
		}
		return porcupine.Operation{Input: registerInput{"read", 0, 0}, Output: registerOutput{true, true, value}}, true, nil
	case "write":
		if status == "fail" {
			return porcupine.Operation{}, false, nil
		}
		value, err := ednInteger(invocation.value)
		if err != nil {
			return porcupine.Operation{}, false, err
		}
		return porcupine.Operation{Input: registerInput{"write", value, 0}, Output: registerOutput{known, true, 0}}, true, nil
	case "cas":
		expected, updated, err := ednPair(invocation.value)
		if err != nil {
			return porcupine.Operation{}, false, err
		}
		output := registerOutput{status != "info", status == "ok", 0}
		return porcupine.Operation{Input: registerInput{"cas", expected, updated}, Output: output}, true, nil
	}
	return porcupine.Operation{}, false, fmt.Errorf("the register model has no operation %q", invocation.function)
}

type report struct {
	File       string    `json:"file"`
	Operations int       `json:"operations"`
	Verdict    string    `json:"verdict"`
	Seconds    []float64 `json:"seconds"`
}

func main() {
	modelName := flag.String("model", "", "register (etcd logs) or kv (EDN maps)")
	repeat := flag.Int("repeat", 5, "checks per file; each one's time is reported")
	timeoutSeconds := flag.Float64("timeout-seconds", 0, "give up as unknown after this long per check (0: never)")
	flag.Parse()
	models := map[string]porcupine.Model{"register": registerModel, "kv": keyValueModel}
	model, known := models[*modelName]
	if !known || *repeat < 1 || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: porcupine-check -model register|kv [-repeat N] [-timeout-seconds S] FILE...")
		os.Exit(2)
	}
	timeout := time.Duration(*timeoutSeconds * float64(time.Second))
	encoder := json.NewEncoder(os.Stdout)
	for _, path := range flag.Args() {
		events, err := readEvents(path, *modelName)
		var operations []porcupine.Operation
		if err == nil {
			operations, err = operationsOf(path, *modelName, events)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "porcupine-check:", err)
			os.Exit(2)
		}
		result := report{File: path, Operations: len(operations)}
		for run := 0; run < *repeat; run++ {
			started := time.Now()
			verdict := porcupine.CheckOperationsTimeout(model, operations, timeout)
			result.Seconds = append(result.Seconds, time.Since(started).Seconds())
			result.Verdict = map[porcupine.CheckResult]string{
				porcupine.Ok: "linearizable", porcupine.Illegal: "not linearizable", porcupine.Unknown: "unknown",
			}[verdict]
		}
		if err := encoder.Encode(result); err != nil {
			fmt.Fprintln(os.Stderr, "porcupine-check:", err)
			os.Exit(2)
		}
	}
}
