//! Folded stacks (Brendan Gregg's collapsed format), the text form of a profile that flame
//! graph tools read: `process (pid);thread (tid);frame;...;leaf count`, root first.
use super::{Mode, Profile, category::Category, frame::Frame};

impl Profile {
    /// Folded-stack lines, sorted, for folded and SVG output. In `cpu` mode: on-CPU stacks,
    /// counted in samples. In `wall` mode: every stack, off-CPU ones ending in a frame naming
    /// their wait (`[net] recv tcp 10.0.0.5:5432`), weighted in microseconds.
    pub fn folded_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for p in &self.processes {
            let process = format!("{} ({})", sanitize(&p.comm), p.pid);
            for s in &p.stacks {
                let count = match self.mode {
                    Mode::Cpu if s.category == Category::Cpu => s.samples,
                    Mode::Cpu => continue,
                    Mode::Wall => s.weight_ns / 1000,
                };
                if count == 0 {
                    continue;
                }
                let mut line = format!("{process};{} ({})", sanitize(&s.thread), s.tid);
                for f in s.frames_with_wait() {
                    line.push(';');
                    line.push_str(&sanitize_frame(&f));
                }
                line.push(' ');
                line.push_str(&count.to_string());
                lines.push(line);
            }
        }
        lines.sort();
        lines
    }
}

fn sanitize_frame(f: &Frame) -> String {
    sanitize(&f.to_string())
}

/// Frame text safe inside a folded line: `;` separates frames and a newline ends the line.
pub fn sanitize(frame: &str) -> String {
    frame.replace(';', ":").replace(['\n', '\r'], " ")
}
