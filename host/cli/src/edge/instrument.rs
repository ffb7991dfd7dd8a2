//! The rewrite every core module gets before it goes into an edge bundle. workerd can
//! neither interrupt a running call nor make a fresh instance per call cheaply (jco's glue
//! alone costs a quarter of a millisecond per component), so the module carries what the
//! host's sandbox gives a call for free:
//!
//! - **Fuel, for the deadline.** Every function entry and loop header charges the number
//!   of instructions that can run before the next charge point, and bulk memory operations
//!   charge for their length. A call that runs out of fuel sets it to -1 and traps, so the
//!   worker can tell a deadline from any other trap.
//! - **The memory cap.** `memory.grow` past the host's cap records the size asked for and
//!   traps, as the host's resource limiter does.
//! - **A snapshot to restore.** Each memory the module defines is exported, and new
//!   functions save its mutable globals into shadow globals after instantiation and put
//!   them back, so the worker returns the instance to its state at instantiation before
//!   every call, and no call sees what the one before it left behind.
//!
//! Fuel and the globals stay inside the module, reached through exported functions: V8
//! boxes an exported mutable global, and the stack pointer and fuel are touched on every
//! call and loop, which measurably slowed a decision.
//!
//! A module that can change state the snapshot does not cover (tables, dropped segments)
//! is marked not restorable; the worker then instantiates it afresh for every call.

use wasm_encoder::reencode::{Error, Reencode, utils};
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, ExportKind, ExportSection, Function, FunctionSection, GlobalSection, GlobalType, InstructionSink, Module, SectionId,
    TypeSection, ValType,
};
use wasmparser::{CompositeInnerType, Operator, Parser, Payload, TypeRef};

/// `(fuel: i64)`: arms a call with this much fuel and clears the memory record.
pub const SET_FUEL: &str = "__rekindle:set-fuel";
/// `() -> i64`: the fuel left; -1 once a call ran out.
pub const FUEL: &str = "__rekindle:fuel";
/// `() -> i64`: the bytes a `memory.grow` past the cap asked for, else 0.
pub const MEMORY_WANTED: &str = "__rekindle:memory-wanted";
/// `()`: keeps the mutable globals' current values as the ones to restore.
pub const SAVE: &str = "__rekindle:save";
/// `()`: puts the mutable globals back to the values kept by [`SAVE`].
pub const RESTORE: &str = "__rekindle:restore";
/// Prefix of the exports of defined memories, by memory index.
pub const MEMORY_PREFIX: &str = "__rekindle:memory:";

const PAGE: u64 = 65_536;
/// Bytes a bulk memory operation may move per unit of fuel.
const BYTES_PER_FUEL: i64 = 16;

/// What the rewrite gave back.
#[derive(Debug)]
pub struct Instrumented {
    pub bytes: Vec<u8>,
    /// Whether putting back the exported memories and globals restores every piece of
    /// state a call can change.
    pub restorable: bool,
    /// Whether the module defines a memory: the plugin's own module, rather than one of
    /// the small modules that connect its imports.
    pub defines_memory: bool,
}

/// Why a module cannot run at the edge.
#[derive(Debug, thiserror::Error)]
pub enum InstrumentError {
    #[error("the module is not valid WebAssembly: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    #[error("{0}")]
    Unsupported(String),
    #[error("rewriting the module failed: {0}")]
    Reencode(String),
}

/// Rewrites a core module: fuel checks charged against `fuel` (which is also its value
/// during instantiation), `memory.grow` capped at `memory_cap` bytes, memories exported
/// and mutable globals saved and restored through exported functions.
pub fn instrument(bytes: &[u8], fuel: i64, memory_cap: u64) -> Result<Instrumented, InstrumentError> {
    let survey = Survey::of(bytes)?;
    if survey.memories > 1 {
        return Err(InstrumentError::Unsupported(format!("the module has {} memories; the edge runs modules with one", survey.memories)));
    }
    if survey.memory64 {
        return Err(InstrumentError::Unsupported("the module has a 64-bit memory, which the edge does not run".into()));
    }
    let globals = survey.imported_globals + survey.defined_globals.len() as u32;
    let functions = survey.imported_functions + survey.function_types.len() as u32;
    let added = Added {
        fuel: globals,
        wanted: globals + 1,
        shadows: globals + 2,
        types: survey.types,
        functions,
        grow: (survey.memories == 1).then_some(GrowLimits { cap_pages: memory_cap / PAGE }),
        done_types: false,
        done_functions: false,
        done_code: false,
    };
    let mut rewrite = Rewrite { survey: &survey, added, fuel, next_body: 0, added_globals: false, added_exports: false };
    let mut module = Module::new();
    rewrite.parse_core_module(&mut module, Parser::new(0), bytes).map_err(|e| InstrumentError::Reencode(e.to_string()))?;
    Ok(Instrumented { bytes: module.finish(), restorable: survey.stateful.is_none(), defines_memory: survey.defined_memory })
}

/// The first canonical built-in of a component, other than lifting and lowering, that
/// keeps state in jco's JavaScript glue (resource tables, tasks, streams), where restoring
/// an instance's memory and globals cannot reach it; `None` for a component with none.
/// Such a component gets a fresh instance for every call at the edge.
pub fn glue_state(component: &[u8]) -> Result<Option<String>, InstrumentError> {
    for payload in Parser::new(0).parse_all(component) {
        if let Payload::ComponentCanonicalSection(reader) = payload? {
            for function in reader {
                match function? {
                    wasmparser::CanonicalFunction::Lift { .. } | wasmparser::CanonicalFunction::Lower { .. } => {}
                    other => {
                        let name = format!("{other:?}");
                        return Ok(Some(name.split([' ', '{', '(']).next().unwrap_or_default().to_string()));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// The counts the rewrite needs before it starts.
#[derive(Default)]
struct Survey {
    types: u32,
    /// Parameter counts by type index (0 for non-function types).
    params: Vec<u32>,
    imported_functions: u32,
    /// The type of each defined function.
    function_types: Vec<u32>,
    imported_globals: u32,
    defined_globals: Vec<wasmparser::GlobalType>,
    memories: u32,
    defined_memory: bool,
    memory64: bool,
    /// The first instruction found that changes state outside memories and globals.
    stateful: Option<&'static str>,
}

impl Survey {
    fn of(bytes: &[u8]) -> Result<Survey, InstrumentError> {
        let mut s = Survey::default();
        for payload in Parser::new(0).parse_all(bytes) {
            match payload? {
                Payload::Version { encoding: wasmparser::Encoding::Component, .. } => {
                    return Err(InstrumentError::Unsupported("a component, where a core module was expected".into()));
                }
                Payload::TypeSection(reader) => {
                    for group in reader {
                        for sub in group?.into_types() {
                            s.types += 1;
                            s.params.push(match &sub.composite_type.inner {
                                CompositeInnerType::Func(f) => f.params().len() as u32,
                                _ => 0,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        match import?.ty {
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => s.imported_functions += 1,
                            TypeRef::Global(_) => s.imported_globals += 1,
                            TypeRef::Memory(m) => {
                                s.memories += 1;
                                s.memory64 |= m.memory64;
                            }
                            _ => {}
                        }
                    }
                }
                Payload::FunctionSection(reader) => {
                    for ty in reader {
                        s.function_types.push(ty?);
                    }
                }
                Payload::MemorySection(reader) => {
                    for memory in reader {
                        let memory = memory?;
                        s.memories += 1;
                        s.defined_memory = true;
                        s.memory64 |= memory.memory64;
                    }
                }
                Payload::GlobalSection(reader) => {
                    for global in reader {
                        s.defined_globals.push(global?.ty);
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let mut reader = body.get_operators_reader()?;
                    while !reader.eof() {
                        let op = reader.read()?;
                        // The host caps a table at 100,000 entries; the edge has no such
                        // cap to give, and no plugin built with the SDK grows a table.
                        if matches!(op, Operator::TableGrow { .. }) {
                            return Err(InstrumentError::Unsupported("the module grows a table (table.grow), which the edge does not run".into()));
                        }
                        if s.stateful.is_none() {
                            s.stateful = state_changing(&op);
                        }
                    }
                }
                Payload::TableSection(reader) => {
                    for table in reader {
                        if table?.ty.table64 {
                            return Err(InstrumentError::Unsupported("the module has a 64-bit table, which the edge does not run".into()));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// The defined mutable globals, by global index, with their types.
    fn mutable_globals(&self) -> impl Iterator<Item = (u32, wasmparser::ValType)> + '_ {
        self.defined_globals.iter().enumerate().filter(|(_, g)| g.mutable).map(|(i, g)| (self.imported_globals + i as u32, g.content_type))
    }
}

/// The name of an instruction that changes state a memory and globals snapshot misses.
fn state_changing(op: &Operator<'_>) -> Option<&'static str> {
    Some(match op {
        Operator::TableSet { .. } => "table.set",
        Operator::TableGrow { .. } => "table.grow",
        Operator::TableFill { .. } => "table.fill",
        Operator::TableCopy { .. } => "table.copy",
        Operator::TableInit { .. } => "table.init",
        Operator::ElemDrop { .. } => "elem.drop",
        Operator::DataDrop { .. } => "data.drop",
        _ => return None,
    })
}

/// How `memory.grow` is capped.
#[derive(Clone, Copy)]
struct GrowLimits {
    cap_pages: u64,
}

/// Where the rewrite's own globals, types and functions go: after the module's.
#[derive(Clone, Copy)]
struct Added {
    fuel: u32,
    wanted: u32,
    /// The first shadow global; one per mutable global, in order.
    shadows: u32,
    /// The first added type: `(i64)`, `() -> i64`, `()`, then `(i32) -> i32` for grow.
    types: u32,
    /// The first added function: set-fuel, fuel, memory-wanted, save, restore, then grow.
    functions: u32,
    grow: Option<GrowLimits>,
    done_types: bool,
    done_functions: bool,
    done_code: bool,
}

impl Added {
    const SET_FUEL: u32 = 0;
    const FUEL: u32 = 1;
    const WANTED: u32 = 2;
    const SAVE: u32 = 3;
    const RESTORE: u32 = 4;
    const GROW: u32 = 5;
}

struct Rewrite<'s> {
    survey: &'s Survey,
    added: Added,
    fuel: i64,
    /// The defined function whose body comes next.
    next_body: usize,
    added_globals: bool,
    added_exports: bool,
}

/// Where a section goes in a module, for adding ones the module lacks.
fn position(id: SectionId) -> u8 {
    match id {
        SectionId::Type => 1,
        SectionId::Import => 2,
        SectionId::Function => 3,
        SectionId::Table => 4,
        SectionId::Memory => 5,
        SectionId::Tag => 6,
        SectionId::Global => 7,
        SectionId::Export => 8,
        SectionId::Start => 9,
        SectionId::Element => 10,
        SectionId::DataCount => 11,
        SectionId::Code => 12,
        SectionId::Data => 13,
        _ => 0,
    }
}

impl Rewrite<'_> {
    fn add_globals(&mut self, globals: &mut GlobalSection) -> Result<(), Error<String>> {
        let i64_global = GlobalType { val_type: ValType::I64, mutable: true, shared: false };
        globals.global(i64_global, &ConstExpr::i64_const(self.fuel));
        globals.global(i64_global, &ConstExpr::i64_const(0));
        for (_, ty) in self.survey.mutable_globals() {
            let val_type = self.val_type(ty)?;
            let zero = match val_type {
                ValType::I32 => ConstExpr::i32_const(0),
                ValType::I64 => ConstExpr::i64_const(0),
                ValType::F32 => ConstExpr::f32_const(0.0.into()),
                ValType::F64 => ConstExpr::f64_const(0.0.into()),
                ValType::V128 => ConstExpr::v128_const(0),
                ValType::Ref(r) if r.nullable => ConstExpr::ref_null(r.heap_type),
                ValType::Ref(_) => {
                    return Err(Error::UserError("a mutable global of a non-nullable reference type".into()));
                }
            };
            globals.global(GlobalType { val_type, mutable: true, shared: false }, &zero);
        }
        self.added_globals = true;
        Ok(())
    }

    fn add_exports(&mut self, exports: &mut ExportSection) {
        let f = self.added.functions;
        exports.export(SET_FUEL, ExportKind::Func, f + Added::SET_FUEL);
        exports.export(FUEL, ExportKind::Func, f + Added::FUEL);
        exports.export(MEMORY_WANTED, ExportKind::Func, f + Added::WANTED);
        exports.export(SAVE, ExportKind::Func, f + Added::SAVE);
        exports.export(RESTORE, ExportKind::Func, f + Added::RESTORE);
        if self.survey.defined_memory {
            exports.export(&format!("{MEMORY_PREFIX}0"), ExportKind::Memory, 0);
        }
        self.added_exports = true;
    }

    /// Takes the cost `push_cost` leaves on the stack from the fuel, trapping (with the
    /// fuel at -1) when there is less.
    fn deduct(&self, f: &mut Function, push_cost: impl Fn(&mut InstructionSink<'_>)) {
        let fuel = self.added.fuel;
        let mut sink = f.instructions();
        sink.global_get(fuel);
        push_cost(&mut sink);
        sink.i64_lt_s().if_(BlockType::Empty).i64_const(-1).global_set(fuel).unreachable().end().global_get(fuel);
        push_cost(&mut sink);
        sink.i64_sub().global_set(fuel);
    }

    /// Charges `cost` units of fuel.
    fn charge(&self, f: &mut Function, cost: u64) {
        self.deduct(f, |sink| {
            sink.i64_const(cost as i64);
        });
    }

    /// Charges for the byte count on top of the stack (left there), kept in `scratch`.
    fn charge_length(&self, f: &mut Function, scratch: u32) {
        f.instructions().local_set(scratch);
        self.deduct(f, |sink| {
            sink.local_get(scratch).i64_extend_i32_u().i64_const(BYTES_PER_FUEL).i64_div_u();
        });
        f.instructions().local_get(scratch);
    }

    fn add_types(&mut self, types: &mut TypeSection) {
        types.ty().function([ValType::I64], []);
        types.ty().function([], [ValType::I64]);
        types.ty().function([], []);
        if self.added.grow.is_some() {
            types.ty().function([ValType::I32], [ValType::I32]);
        }
        self.added.done_types = true;
    }

    fn add_functions(&mut self, functions: &mut FunctionSection) {
        let t = self.added.types;
        for ty in [t, t + 1, t + 1, t + 2, t + 2] {
            functions.function(ty);
        }
        if self.added.grow.is_some() {
            functions.function(t + 3);
        }
        self.added.done_functions = true;
    }

    fn add_code(&mut self, code: &mut CodeSection) {
        for body in self.added_bodies() {
            code.function(&body);
        }
        self.added.done_code = true;
    }

    /// The bodies of the added functions, in the order [`Added`] numbers them.
    fn added_bodies(&self) -> Vec<Function> {
        let a = self.added;
        let mut set_fuel = Function::new([]);
        set_fuel.instructions().local_get(0).global_set(a.fuel).i64_const(0).global_set(a.wanted).end();
        let mut fuel = Function::new([]);
        fuel.instructions().global_get(a.fuel).end();
        let mut wanted = Function::new([]);
        wanted.instructions().global_get(a.wanted).end();
        let (mut save, mut restore) = (Function::new([]), Function::new([]));
        for (k, (global, _)) in self.survey.mutable_globals().enumerate() {
            let shadow = a.shadows + k as u32;
            save.instructions().global_get(global).global_set(shadow);
            restore.instructions().global_get(shadow).global_set(global);
        }
        save.instructions().end();
        restore.instructions().end();
        let mut bodies = vec![set_fuel, fuel, wanted, save, restore];
        if let Some(grow) = a.grow {
            bodies.push(self.grow_body(grow));
        }
        bodies
    }

    /// `memory.grow` as the host's limiter answers it: past the cap, the size asked for
    /// is recorded and the call traps. wasmtime asks the limiter before it checks the
    /// memory's declared maximum, so a grow past both traps too; one within the cap but
    /// past the maximum fails with -1, as unrewritten.
    fn grow_body(&self, grow: GrowLimits) -> Function {
        let mut f = Function::new([(1, ValType::I64)]);
        f.instructions()
            .memory_size(0)
            .i64_extend_i32_u()
            .local_get(0)
            .i64_extend_i32_u()
            .i64_add()
            .local_tee(1)
            .i64_const(grow.cap_pages as i64)
            .i64_gt_u()
            .if_(BlockType::Empty)
            .local_get(1)
            .i64_const(PAGE as i64)
            .i64_mul()
            .global_set(self.added.wanted)
            .unreachable()
            .end()
            .local_get(0)
            .memory_grow(0)
            .end();
        f
    }
}

/// The fuel each charge point takes: `[function entry, then each loop in order]`, each the
/// count of instructions it covers (those outside any nested loop), so a call is charged
/// at least one unit for every instruction it runs.
fn charge_costs(ops: &[Operator<'_>]) -> Vec<u64> {
    let mut costs = vec![0u64];
    let mut frames = vec![0usize];
    for op in ops {
        let Some(&target) = frames.last() else { break };
        costs[target] += 1;
        match op {
            Operator::Loop { .. } => {
                frames.push(costs.len());
                costs.push(0);
            }
            Operator::Block { .. } | Operator::If { .. } | Operator::TryTable { .. } | Operator::Try { .. } => frames.push(target),
            Operator::End | Operator::Delegate { .. } => {
                frames.pop();
            }
            _ => {}
        }
    }
    costs.iter().map(|&c| c.max(1)).collect()
}

/// Instructions whose work grows with the length on top of the stack.
fn is_bulk(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::MemoryFill { .. }
            | Operator::MemoryCopy { .. }
            | Operator::MemoryInit { .. }
            | Operator::TableFill { .. }
            | Operator::TableCopy { .. }
            | Operator::TableInit { .. }
    )
}

impl Reencode for Rewrite<'_> {
    type Error = String;

    fn parse_type_section(&mut self, types: &mut TypeSection, section: wasmparser::TypeSectionReader<'_>) -> Result<(), Error<String>> {
        utils::parse_type_section(self, types, section)?;
        self.add_types(types);
        Ok(())
    }

    fn parse_function_section(&mut self, functions: &mut FunctionSection, section: wasmparser::FunctionSectionReader<'_>) -> Result<(), Error<String>> {
        utils::parse_function_section(self, functions, section)?;
        self.add_functions(functions);
        Ok(())
    }

    fn parse_global_section(&mut self, globals: &mut GlobalSection, section: wasmparser::GlobalSectionReader<'_>) -> Result<(), Error<String>> {
        utils::parse_global_section(self, globals, section)?;
        self.add_globals(globals)
    }

    fn parse_export_section(&mut self, exports: &mut ExportSection, section: wasmparser::ExportSectionReader<'_>) -> Result<(), Error<String>> {
        for export in section {
            let export = export?;
            if export.name.starts_with("__rekindle:") {
                return Err(Error::UserError(format!("the module already exports `{}`, a name the edge reserves", export.name)));
            }
            exports.export(export.name, self.export_kind(export.kind)?, export.index);
        }
        self.add_exports(exports);
        Ok(())
    }

    fn intersperse_section_hook(&mut self, module: &mut Module, _after: Option<SectionId>, before: Option<SectionId>) -> Result<(), Error<String>> {
        let past = |id: SectionId| before.is_none_or(|b| position(b) > position(id));
        // A section the module lacks is added where it belongs, holding only ours.
        if !self.added.done_types && past(SectionId::Type) {
            let mut types = TypeSection::new();
            self.add_types(&mut types);
            module.section(&types);
        }
        if !self.added.done_functions && past(SectionId::Function) {
            let mut functions = FunctionSection::new();
            self.add_functions(&mut functions);
            module.section(&functions);
        }
        if !self.added_globals && past(SectionId::Global) {
            let mut globals = GlobalSection::new();
            self.add_globals(&mut globals)?;
            module.section(&globals);
        }
        if !self.added_exports && past(SectionId::Export) {
            let mut exports = ExportSection::new();
            self.add_exports(&mut exports);
            module.section(&exports);
        }
        if !self.added.done_code && past(SectionId::Code) {
            let mut code = CodeSection::new();
            self.add_code(&mut code);
            module.section(&code);
        }
        Ok(())
    }

    fn parse_code_section(&mut self, code: &mut CodeSection, section: wasmparser::CodeSectionReader<'_>) -> Result<(), Error<String>> {
        utils::parse_code_section(self, code, section)?;
        self.add_code(code);
        Ok(())
    }

    fn parse_function_body(&mut self, code: &mut CodeSection, body: wasmparser::FunctionBody<'_>) -> Result<(), Error<String>> {
        let ty = self.survey.function_types.get(self.next_body).copied().ok_or_else(|| Error::UserError("more bodies than functions".into()))?;
        self.next_body += 1;
        let mut locals = Vec::new();
        let mut declared = self.survey.params.get(ty as usize).copied().unwrap_or(0);
        for local in body.get_locals_reader()? {
            let (count, ty) = local?;
            declared += count;
            locals.push((count, self.val_type(ty)?));
        }
        let mut reader = body.get_operators_reader()?;
        let mut ops = Vec::new();
        while !reader.eof() {
            ops.push(reader.read()?);
        }
        let scratch = declared;
        if ops.iter().any(is_bulk) {
            locals.push((1, ValType::I32));
        }
        let mut f = Function::new(locals);
        let costs = charge_costs(&ops);
        let mut next_loop = 1;
        self.charge(&mut f, costs[0]);
        for op in ops {
            match op {
                Operator::MemoryGrow { mem: 0 } if self.added.grow.is_some() => {
                    f.instructions().call(self.added.functions + Added::GROW);
                }
                Operator::Loop { .. } => {
                    let instruction = self.instruction(op)?;
                    f.instruction(&instruction);
                    self.charge(&mut f, costs.get(next_loop).copied().unwrap_or(1));
                    next_loop += 1;
                }
                op if is_bulk(&op) => {
                    self.charge_length(&mut f, scratch);
                    let instruction = self.instruction(op)?;
                    f.instruction(&instruction);
                }
                op => {
                    let instruction = self.instruction(op)?;
                    f.instruction(&instruction);
                }
            }
        }
        code.function(&f);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(wat: &str, fuel: i64, cap: u64) -> Instrumented {
        let out = instrument(&wat::parse_str(wat).unwrap(), fuel, cap).unwrap();
        wasmparser::Validator::new().validate_all(&out.bytes).expect("the rewritten module validates");
        out
    }

    #[test]
    fn loops_and_calls_charge_and_the_exports_are_added() {
        let out = run(
            r#"(module (memory 1) (global $g (mut i32) (i32.const 7)) (global i32 (i32.const 1))
                 (func (export "spin") (loop $l (br $l)))
                 (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
                 (func (export "fill") (param i32) (memory.fill (i32.const 0) (i32.const 0) (local.get 0))))"#,
            100,
            2 * PAGE,
        );
        assert!(out.restorable);
        let exports: Vec<String> = Parser::new(0)
            .parse_all(&out.bytes)
            .filter_map(|p| match p.unwrap() {
                Payload::ExportSection(r) => Some(r.into_iter().map(|e| e.unwrap().name.to_string()).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect();
        for name in [SET_FUEL, FUEL, MEMORY_WANTED, SAVE, RESTORE, "__rekindle:memory:0", "spin"] {
            assert!(exports.iter().any(|e| e == name), "{name} in {exports:?}");
        }
    }

    /// The rewritten module, instantiated in wasmtime (the behaviour is V8's too: plain
    /// core WebAssembly).
    fn instance(wat: &str, fuel: i64, cap: u64) -> (wasmtime::Store<()>, wasmtime::Instance) {
        let bytes = run(wat, fuel, cap).bytes;
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, &bytes).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        (store, instance)
    }

    fn get(store: &mut wasmtime::Store<()>, instance: &wasmtime::Instance, name: &str) -> i64 {
        instance.get_typed_func::<(), i64>(&mut *store, name).unwrap().call(&mut *store, ()).unwrap()
    }

    #[test]
    fn an_endless_loop_runs_out_of_fuel_and_says_so() {
        let (mut store, instance) = instance(r#"(module (func (export "spin") (loop $l (br $l))) (func (export "once") (nop)))"#, 1_000, PAGE);
        let spin = instance.get_typed_func::<(), ()>(&mut store, "spin").unwrap();
        let set_fuel = instance.get_typed_func::<i64, ()>(&mut store, SET_FUEL).unwrap();
        set_fuel.call(&mut store, 1_000_000).unwrap();
        assert!(spin.call(&mut store, ()).is_err());
        assert_eq!(get(&mut store, &instance, FUEL), -1);
        // A call that finishes leaves fuel over, charged for what it ran.
        set_fuel.call(&mut store, 100).unwrap();
        instance.get_typed_func::<(), ()>(&mut store, "once").unwrap().call(&mut store, ()).unwrap();
        let left = get(&mut store, &instance, FUEL);
        assert!((90..100).contains(&left), "{left}");
    }

    #[test]
    fn growing_past_the_cap_records_the_size_and_traps() {
        let (mut store, instance) =
            instance(r#"(module (memory 1) (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"#, 1_000, 4 * PAGE);
        let grow = instance.get_typed_func::<i32, i32>(&mut store, "grow").unwrap();
        assert_eq!(grow.call(&mut store, 3).unwrap(), 1, "up to the cap grows");
        assert_eq!(get(&mut store, &instance, MEMORY_WANTED), 0);
        assert!(grow.call(&mut store, 1).is_err());
        assert_eq!(get(&mut store, &instance, MEMORY_WANTED), 5 * PAGE as i64);
        // Past the declared maximum but within the cap, the grow fails as unrewritten;
        // past both, it traps, as the host's limiter (asked first) makes it.
        let (mut store, instance) =
            self::instance(r#"(module (memory 1 2) (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"#, 1_000, 4 * PAGE);
        let grow = instance.get_typed_func::<i32, i32>(&mut store, "grow").unwrap();
        assert_eq!(grow.call(&mut store, 2).unwrap(), -1);
        assert!(grow.call(&mut store, 70_000).is_err());
        assert_eq!(get(&mut store, &instance, MEMORY_WANTED), 70_001 * PAGE as i64);
    }

    #[test]
    fn restore_puts_the_globals_back_as_saved() {
        let (mut store, instance) = instance(
            r#"(module (global $g (mut i64) (i64.const 5)) (global $h (mut f64) (f64.const 1.5))
                 (func (export "bump") (global.set $g (i64.add (global.get $g) (i64.const 1))) (global.set $h (f64.const 9)))
                 (func (export "g") (result i64) (global.get $g)))"#,
            1_000,
            PAGE,
        );
        let call = |store: &mut wasmtime::Store<()>, name: &str| instance.get_typed_func::<(), ()>(&mut *store, name).unwrap().call(&mut *store, ()).unwrap();
        call(&mut store, SAVE);
        call(&mut store, "bump");
        call(&mut store, "bump");
        assert_eq!(get(&mut store, &instance, "g"), 7);
        call(&mut store, RESTORE);
        assert_eq!(get(&mut store, &instance, "g"), 5);
    }

    #[test]
    fn table_copies_are_charged_by_length_and_table_growth_is_refused() {
        let (mut store, instance) =
            instance(r#"(module (table 1000 funcref) (func (export "copy") (param i32) (table.copy (i32.const 0) (i32.const 0) (local.get 0))))"#, 1_000, PAGE);
        let copy = instance.get_typed_func::<i32, ()>(&mut store, "copy").unwrap();
        let set_fuel = instance.get_typed_func::<i64, ()>(&mut store, SET_FUEL).unwrap();
        set_fuel.call(&mut store, 1_000).unwrap();
        copy.call(&mut store, 16).unwrap();
        let small = 1_000 - get(&mut store, &instance, FUEL);
        set_fuel.call(&mut store, 1_000).unwrap();
        copy.call(&mut store, 1_000).unwrap();
        let large = 1_000 - get(&mut store, &instance, FUEL);
        assert!(large >= small + 1_000 / BYTES_PER_FUEL - 2, "{small} then {large}");
        let grows = wat::parse_str(r#"(module (table 1 funcref) (func (drop (table.grow (ref.null func) (i32.const 10)))))"#).unwrap();
        assert!(instrument(&grows, 1, PAGE).unwrap_err().to_string().contains("table.grow"));
    }

    #[test]
    fn glue_state_is_found_in_components_that_keep_it() {
        let component = wat::parse_str(r#"(component (type $r (resource (rep i32))) (core func (canon resource.new $r)))"#).unwrap();
        assert_eq!(glue_state(&component).unwrap().as_deref(), Some("ResourceNew"));
        let shipped = std::fs::read(rekindle_tests::components::TILES_BASIC).unwrap();
        assert_eq!(glue_state(&shipped).unwrap(), None);
    }

    #[test]
    fn tables_and_dropped_segments_make_a_module_not_restorable() {
        let out = run(r#"(module (table 1 funcref) (func (table.set (i32.const 0) (ref.null func))))"#, 100, PAGE);
        assert!(!out.restorable);
        let out = run(r#"(module (memory 1) (data "x") (func (data.drop 0)))"#, 100, PAGE);
        assert!(!out.restorable);
    }

    #[test]
    fn a_module_without_globals_or_exports_gets_them() {
        run(r#"(module (func (loop)))"#, 100, PAGE);
        run(r#"(module)"#, 100, PAGE);
        run(r#"(module (import "" "f" (func)) (table 1 funcref) (elem (i32.const 0) 0))"#, 100, PAGE);
    }

    #[test]
    fn reserved_export_names_and_two_memories_are_refused() {
        let bytes = wat::parse_str(r#"(module (global (export "__rekindle:fuel") i32 (i32.const 0)))"#).unwrap();
        assert!(instrument(&bytes, 1, PAGE).is_err());
        let bytes = wat::parse_str(r#"(module (memory 1) (memory 1))"#).unwrap();
        assert!(instrument(&bytes, 1, PAGE).unwrap_err().to_string().contains("2 memories"));
    }

    #[test]
    fn charge_points_cover_every_instruction_outside_nested_loops() {
        let bytes = wat::parse_str(r#"(module (func (nop) (loop (nop) (nop) (loop (nop))) (nop)))"#).unwrap();
        let body = Parser::new(0)
            .parse_all(&bytes)
            .find_map(|p| match p.unwrap() {
                Payload::CodeSectionEntry(b) => Some(b),
                _ => None,
            })
            .unwrap();
        let mut reader = body.get_operators_reader().unwrap();
        let mut ops = Vec::new();
        while !reader.eof() {
            ops.push(reader.read().unwrap());
        }
        // nop, loop, nop, end(fn) | nop, nop, loop, end | nop, end
        assert_eq!(charge_costs(&ops), vec![4, 4, 2]);
    }
}
